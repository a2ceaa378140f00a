"""Header injection: arbitrary Unicode (CR, LF, NEL, LINE SEPARATOR, encoded-word newlines)
in every user-controlled value that reaches a header never adds or splits a header.

Bar: 0 injected headers (10,000 examples per field in the soak)."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.audience import Recipient
from mailer.compose import IssueContent, PreparedIssue
from mailer.errors import MailerError
from tests.mailer.test_compose import LAYOUT, SENDER
from tests.reliability.conftest import record, size

EXPECTED = {
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Precedence", "Feedback-ID",
}  # fmt: skip
_PIECES = st.one_of(
    st.characters(),
    st.sampled_from(["\r", "\n", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", ":"]),
    st.sampled_from(["=?utf-8?q?a=0D=0ABcc:_x@evil?=", "=?utf-8?b?DQpCY2M6IHhAZXZpbA==?="]),
    st.sampled_from(["Bcc: x@evil.example", "\r\nX-Injected: 1"]),
)
HOSTILE = st.lists(_PIECES, max_size=20).map("".join)
COUNTS = {"examples": 0, "refused": 0, "injected": 0}


def content(subject: str = "News for {{ subscriber.name }}", title: str = "Weekly") -> IssueContent:
    return IssueContent(
        issue_id=1,
        subject=subject,
        preheader="",
        html_body="<p>Dear {{ subscriber.name }} of {{ subscriber.company }}</p>",
        text_body=None,
        locale="en",
        magazine_slug="weekly",
        magazine_title=title,
    )


PREPARED = PreparedIssue(content(), SENDER, LAYOUT, lambda s: s)


def check(raw: bytes) -> None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    names = set(parsed.keys())
    lines = head.split(b"\r\n")
    bare = [line for line in lines if b"\n" in line or b"\r" in line]
    injected = bool(names - EXPECTED) or len(names) != len(list(parsed.keys())) or bare
    if injected:
        COUNTS["injected"] += 1
    assert not injected, (names - EXPECTED, bare)
    for value in parsed.values():
        assert "\n" not in str(value)
        assert "\r" not in str(value)


def attempt(build: object) -> None:
    COUNTS["examples"] += 1
    try:
        raw = build()  # type: ignore[operator]
    except MailerError:  # refused: a line break, an empty subject, a template error
        COUNTS["refused"] += 1
        return
    check(raw)


SUBSCRIBER = settings(
    max_examples=size(2000, 10_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ISSUE = settings(
    max_examples=size(300, 10_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SUBSCRIBER
@given(value=HOSTILE)
def test_subscriber_name_in_the_subject(value: str) -> None:
    attempt(
        lambda: PREPARED.message(Recipient(1, "r@example.org", {"name": value, "company": ""}), "t")
    )


@SUBSCRIBER
@given(value=HOSTILE)
def test_subscriber_company(value: str) -> None:
    attempt(
        lambda: PREPARED.message(Recipient(1, "r@example.org", {"name": "", "company": value}), "t")
    )


@ISSUE
@given(value=HOSTILE)
def test_issue_subject(value: str) -> None:
    def build() -> bytes:
        return PreparedIssue(content(subject=value or "x"), SENDER, LAYOUT, lambda s: s).message(
            Recipient(1, "r@example.org", {"name": "Ann", "company": ""}), "t"
        )

    attempt(build)


@ISSUE
@given(value=HOSTILE)
def test_magazine_title_in_list_id(value: str) -> None:
    def build() -> bytes:
        return PreparedIssue(content(title=value), SENDER, LAYOUT, lambda s: s).message(
            Recipient(1, "r@example.org", {"name": "Ann", "company": ""}), "t"
        )

    attempt(build)


def test_zz_no_header_was_injected() -> None:
    """Runs after the property tests of this module: the figure for the table."""
    met = COUNTS["injected"] == 0 and COUNTS["examples"] > 0
    record(
        "header injection",
        "injected headers",
        f"{COUNTS['injected']} in {COUNTS['examples']} examples ({COUNTS['refused']} refused)",
        "0",
        met,
    )
    assert met
