"""What comes back: bounces, complaints, auto-replies and unsubscribe mails, classified.

``classify`` reads one inbound message and says what it is and which delivery it concerns.
The delivery is found through the opaque token first (the VERP return path or the
List-Unsubscribe mailto the message was sent to, or, inside a complaint or a bounce that
quotes the original, its Message-ID or List-Unsubscribe header), so a report with a redacted
recipient still finds its person. DSNs (RFC 3464) and the many non-standard bounce formats
are read with flufl.bounce, as Mailman does; ARF complaints (RFC 5965) by their report type;
auto-replies by RFC 3834's Auto-Submitted and the usual vendor headers.

The opt-in store acts on the outcome through ``FeedbackSink`` and keeps the raw message
through ``InboundStore``: this package declares them, ``subscriptions`` implements them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from enum import StrEnum
from typing import Protocol

from flufl.bounce import all_failures

from mailer.verp import TOKEN_LENGTH, DeliveryTokens


class FeedbackKind(StrEnum):
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    auto_reply = "auto_reply"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Feedback:
    kind: FeedbackKind
    delivery_id: int | None
    detail: str = ""


class FeedbackSink(Protocol):
    def apply(self, feedback: Feedback) -> str:
        """Act on one classified message (suppress, unsubscribe, score); say what was done."""
        ...


class InboundStore(Protocol):
    def save(self, *, mail_from: str, recipient: str, raw: bytes) -> int:
        """Store a received message durably; return its id. Called before the 250 reply."""
        ...

    def done(self, message_id: int, feedback: Feedback, outcome: str) -> None: ...


_TOKEN = rf"([a-z2-7]{{{TOKEN_LENGTH}}})"
_AUTO_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?reply|out of (the )?office|abwesenheit|absence|vacation|不在)",
    re.IGNORECASE,
)


def _local_token(address: str, prefix: str, domain: str) -> str | None:
    match = re.fullmatch(rf"{prefix}\+{_TOKEN}@{re.escape(domain)}", address.strip().lower())
    return match.group(1) if match else None


def _quoted_tokens(message: Message, domain: str) -> list[str]:
    """Tokens in the headers of an original message quoted inside a report or bounce."""
    found: list[str] = []
    for part in message.walk():
        if part.get_content_type() not in ("message/rfc822", "text/rfc822-headers"):
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            text = str(payload[0])
        else:
            body = part.get_payload(decode=True)
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        domain_re = re.escape(domain)
        found += re.findall(rf"unsubscribe\+{_TOKEN}@{domain_re}", text, re.IGNORECASE)
        found += re.findall(rf"<{_TOKEN}\.[0-9a-f]+@{domain_re}>", text, re.IGNORECASE)
        found += re.findall(rf"bounce\+{_TOKEN}@{domain_re}", text, re.IGNORECASE)
    return [t.lower() for t in found]


def is_auto_reply(message: Message) -> bool:
    auto = str(message.get("Auto-Submitted", "no")).lower()
    if auto.startswith("auto-replied") or auto.startswith("auto-notified"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    if str(message.get("Precedence", "")).lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.match(str(message.get("Subject", "")).strip()))


def is_complaint(message: Message) -> bool:
    return (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "")).lower() == "feedback-report"
    )


def parse(raw: bytes) -> EmailMessage | None:
    try:
        message = message_from_bytes(raw, policy=policy.compat32)
    except Exception:
        return None
    return message  # type: ignore[return-value]


def classify(raw: bytes, recipient: str, tokens: DeliveryTokens, domain: str) -> Feedback:
    """What one inbound message means; never raises on garbage."""
    domain = domain.lower()
    unsubscribe = _local_token(recipient, "unsubscribe", domain)
    if unsubscribe is not None:
        return Feedback(FeedbackKind.unsubscribe, tokens.read(unsubscribe), "mailto unsubscribe")
    message = parse(raw)
    if message is None:
        return Feedback(FeedbackKind.unknown, None, "unreadable message")
    token = _local_token(recipient, "bounce", domain)
    delivery_id = tokens.read(token) if token else None
    if is_complaint(message):
        for quoted in _quoted_tokens(message, domain):
            delivery_id = delivery_id or tokens.read(quoted)
        return Feedback(FeedbackKind.complaint, delivery_id, "ARF feedback report")
    temporary: frozenset[bytes] = frozenset()
    permanent: frozenset[bytes] = frozenset()
    try:
        found_temporary, found_permanent = all_failures(message)
        temporary, permanent = frozenset(found_temporary), frozenset(found_permanent)
    except Exception:  # noqa: S110 - a detector choking on a malformed bounce
        pass
    if delivery_id is None:
        for quoted in _quoted_tokens(message, domain):
            delivery_id = delivery_id or tokens.read(quoted)
    if permanent:
        return Feedback(FeedbackKind.hard_bounce, delivery_id, _describe(permanent))
    if temporary:
        return Feedback(FeedbackKind.soft_bounce, delivery_id, _describe(temporary))
    # Only now: real DSNs carry "Auto-Submitted: auto-replied" too (RFC 3834).
    if is_auto_reply(message):
        return Feedback(FeedbackKind.auto_reply, delivery_id, "auto-reply ignored")
    if delivery_id is not None and _looks_like_bounce(message):
        return Feedback(FeedbackKind.hard_bounce, delivery_id, "bounce to the VERP address")
    return Feedback(FeedbackKind.unknown, delivery_id, "not a bounce, complaint or unsubscribe")


def _describe(addresses: frozenset[bytes]) -> str:
    return "failed: " + ", ".join(sorted(a.decode("utf-8", "replace") for a in addresses))[:400]


def _looks_like_bounce(message: Message) -> bool:
    """A message to a VERP address that flufl.bounce could not read but that is plainly a
    delivery failure report (from the mailer daemon, or a DSN without parsable fields)."""
    sender = str(message.get("From", "")).lower()
    return (
        message.get_content_type() == "multipart/report"
        or "mailer-daemon" in sender
        or "postmaster" in sender
    )
