"""Free text loses whom it is about: addresses and every kind of token mailmag hands out."""

from __future__ import annotations

from mailer.redact import redact
from mailer.verp import DeliveryTokens


def test_addresses_and_tokens_are_replaced_and_the_rest_is_kept() -> None:
    token = DeliveryTokens(b"k" * 32).make(99)
    cases = {
        "550 5.1.1 <bob.smith@example.org>: Recipient address rejected: User unknown": (
            "550 5.1.1 <address>: Recipient address rejected: User unknown"
        ),
        f"250 2.0.0 <{token}.00c0ffee@example.com> queued": "250 2.0.0 <address> queued",
        f"MAIL FROM:<bounce+{token}@bounces.example.com> refused": "MAIL FROM:<address> refused",
        f"token {token.upper()} was folded": "token <token> was folded",
        "GET /preferences/eyJ4Ijoi.YQ.c2ln?lang=ja 200": "GET /preferences/<token>?lang=ja 200",
        "/verify/a.b.c and /disclosure/x.y.z": "/verify/<token> and /disclosure/<token>",
        "552 5.2.2 quota exceeded for 山田@例え.jp": "552 5.2.2 quota exceeded for <address>",
        "2.0.0 Ok: queued as 4Kx9Lm1ZqPz": "2.0.0 Ok: queued as 4Kx9Lm1ZqPz",
    }
    for text, expected in cases.items():
        assert redact(text) == expected
