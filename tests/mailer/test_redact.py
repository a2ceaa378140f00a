"""Free text loses whom it is about: addresses and every kind of token mailmag hands out."""

from __future__ import annotations

from mailer.redact import redact, storable
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
        # The legacy carrier addresses mailmag accepts are sent quoted, and quoted back.
        '550 5.1.1 <"taro..yamada."@docomo.ne.jp>: unknown': "550 5.1.1 <address>: unknown",
        "550 5.1.1 taro..yamada.@docomo.ne.jp unknown": "550 5.1.1 <address> unknown",
    }
    for text, expected in cases.items():
        assert redact(text) == expected


def test_stored_text_holds_no_nul_and_no_more_than_its_limit() -> None:
    assert storable("451 a\x00b <bob@example.org>") == "451 a\ufffdb <address>"
    assert len(storable("x" * 900)) == 500
