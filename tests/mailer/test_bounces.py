"""One reading of a failure's enhanced status (RFC 3463) for every path: bad addresses are
hard, full mailboxes and system faults soft, policy refusals blocks that suppress no one."""

from __future__ import annotations

import pytest

from mailer.bounces import Verdict, enhanced_status, meaning, verdict
from mailer.feedback import FeedbackKind, refusal


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown", Verdict.hard),
        ("550 5.1.10 Recipient address has null MX", Verdict.hard),
        ("550 5.2.1 The email account that you tried to reach is disabled", Verdict.hard),
        ("552 5.2.2 The email account that you tried to reach is over quota", Verdict.soft),
        ("552 5.3.4 Message too big for system", Verdict.soft),
        ("554 5.4.4 Unable to route", Verdict.soft),
        ("450 4.2.1 The user is receiving mail too quickly", Verdict.soft),
        ("421 4.7.0 Try again later, closing connection", Verdict.soft),
        ("554 5.7.1 Message rejected as spam", Verdict.block),
        ("550 5.7.26 This mail is unauthenticated", Verdict.block),
        ("553 5.3.0 <x@example.net>... No such user here", Verdict.hard),  # undefined: words
        ("550 5.0.0 mailbox quota exceeded", Verdict.soft),
        ("550 Message rejected as spam by Content Filtering", Verdict.block),
        ("550 User unknown", Verdict.hard),
        ("550 Requested action not taken", Verdict.soft),  # a bare 550 says nothing more
        ("553 Requested action not taken: mailbox name not allowed", Verdict.hard),
        ("556 Domain does not accept mail", Verdict.hard),
    ],
)
def test_a_refusal_is_read_by_its_status_then_its_words_then_its_code(
    reply: str, expected: Verdict
) -> None:
    code = int(reply[:3])
    assert verdict(enhanced_status(reply), code, reply) is expected


def test_statuses_are_found_alone_not_in_addresses_or_versions() -> None:
    assert enhanced_status("host 192.0.2.1 said: 550 5.1.1 no") == "5.1.1"
    assert enhanced_status("Postfix 2.11.3 and 10.4.4.1") is None
    assert enhanced_status("Status: 5.02.002 (over quota)") == "5.2.2"
    assert enhanced_status("final status 5.7.1.") == "5.7.1"


def test_successes_and_refusals_without_an_smtp_failure_are_no_bounce() -> None:
    assert verdict(None, 250, "250 2.0.0 OK") is None
    assert verdict("2.0.0") is None
    assert refusal(1, None, "the message could not be composed: bad header") is None


def test_a_block_at_sending_is_feedback_that_suppresses_no_one() -> None:
    blocked = refusal(7, 554, "554 5.7.1 Message rejected as spam")
    assert blocked is not None
    assert (blocked.kind, blocked.delivery_id, blocked.status) == (
        FeedbackKind.blocked,
        7,
        "5.7.1",
    )
    full = refusal(7, 552, "552 5.2.2 Mailbox full")
    assert full is not None
    assert full.kind is FeedbackKind.soft_bounce


def test_a_report_names_each_status_in_rfc_3463s_words() -> None:
    assert meaning("5.1.1") == "permanent: bad destination mailbox address"
    assert meaning("4.2.2") == "temporary: mailbox full"
    assert meaning("5.7.99") == "permanent: policy or security"
    assert meaning(None) == ""
