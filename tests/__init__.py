"""mailmag's test suite; layout mirrors the packages (tests/mailer, tests/subscriptions)."""
