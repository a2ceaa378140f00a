"""The shortcut in address normalisation gives exactly what email-validator gives."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.addresses import normalise_address
from subscriptions.errors import InvalidInput

LOCAL = st.text(alphabet=st.sampled_from("abcXYZ019.+-_!#'~\"() ユ"), min_size=0, max_size=70)
DOMAIN = st.sampled_from(
    [
        "example.org",
        "EXAMPLE.com",
        "日本.jp",
        "xn--wgv71a.jp",
        "foo.test",
        "localhost",
        "-bad.com",
        "a..b.com",
        "example.com.",
        "x" * 64 + ".com",
    ]
)


def reference(address: str) -> str | None:
    try:
        return str(
            validate_email(address, check_deliverability=False, allow_smtputf8=True).normalized
        )
    except EmailNotValidError:
        return None


def ours(address: str) -> str | None:
    try:
        return normalise_address(address)
    except InvalidInput:
        return None


@settings(max_examples=3000, deadline=None)
@given(local=LOCAL, domain=DOMAIN)
def test_the_shortcut_agrees_with_email_validator(local: str, domain: str) -> None:
    address = f"{local}@{domain}".strip()  # surrounding spaces are stripped first, by design
    # Twice: the second call takes the shortcut for a domain seen before.
    assert ours(address) == reference(address)
    assert ours(address) == reference(address)
