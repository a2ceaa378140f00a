"""flufl.bounce's own corpus of real bounces (``samples/flufl-bounce``), each delivered to a
genuine VERP address: every one is read as the RFC 3463 reading says (``mailer.bounces``).

What flufl.bounce reads as a permanent failure is hard, unless the bounce itself says more:
a full mailbox or a temporary status is soft, a policy refusal (5.7.x) a block. What it
reads as temporary is soft. The common non-standard bounces it cannot read are at least
soft. A human reply and an auto-reply are no bounce."""

from __future__ import annotations

from pathlib import Path

import pytest
from flufl.bounce import all_failures

from mailer.feedback import FeedbackKind, classify, parse
from mailer.verp import DeliveryTokens

CORPUS = Path(__file__).parent / "samples" / "flufl-bounce"
DOMAIN = "bounces.example.com"
HARD, SOFT, BLOCKED = FeedbackKind.hard_bounce, FeedbackKind.soft_bounce, FeedbackKind.blocked

# Where the reading differs from flufl.bounce's "permanent", and why (each file was read).
SAYS_MORE = {
    # the mailbox is over quota or full: the reader may come back
    **dict.fromkeys(
        [
            "dsn_01.txt",
            "dsn_04.txt",
            "hotpop_01.txt",
            "newmailru_01.txt",
            "postfix_04.txt",
            "qmail_06.txt",
            "simple_01.txt",
            "simple_07.txt",
            "simple_09.txt",
            "simple_14.txt",
            "simple_38.txt",
            "simple_45.txt",
            "yahoo_02.txt",
            "yahoo_04.txt",
        ],
        SOFT,
    ),
    # a temporary status (4.4.x: no answer, unable to route, time expired)
    **dict.fromkeys(["dsn_02.txt", "simple_44.txt", "yahoo_01.txt"], SOFT),
    # 5.7.1: relaying refused, and content refused as spam
    **dict.fromkeys(["dsn_09.txt", "simple_42.txt"], BLOCKED),
}
# What flufl.bounce cannot read at all.
UNREAD = {
    "bounce_01.txt": SOFT,  # JetMail, empty sender: "mail box space not enough"
    "dumbass_01.txt": SOFT,  # InterScan: "The following mail could not be delivered"
    "simple_43.txt": HARD,  # an NDR from ndr@: "not a valid user of the system"
    "groupwise_03.txt": FeedbackKind.unknown,  # a person's reply, not a bounce
    "qmail_08.txt": FeedbackKind.auto_reply,
}


def expected(name: str, raw: bytes) -> FeedbackKind:
    if name in UNREAD:
        return UNREAD[name]
    message = parse(raw)
    assert message is not None
    temporary, permanent = all_failures(message)
    if permanent:
        return SAYS_MORE.get(name, HARD)
    assert temporary, f"{name}: flufl.bounce reads no failure in it"
    return SOFT


MESSAGES = sorted(path.name for path in CORPUS.glob("*.txt"))


def test_the_corpus_is_all_there() -> None:
    assert len(MESSAGES) == 117


@pytest.mark.parametrize("name", MESSAGES)
def test_each_bounce_of_the_corpus_is_read_by_what_it_says(name: str) -> None:
    tokens = DeliveryTokens(b"corpus-" * 8)
    token = tokens.make(4242)
    raw = (CORPUS / name).read_bytes()
    found = classify(raw, f"bounce+{token}@{DOMAIN}", tokens, DOMAIN)
    assert found.kind is expected(name, raw)
    if found.kind in (HARD, SOFT, BLOCKED, FeedbackKind.auto_reply):
        assert found.delivery_id == 4242
