"""What comes back: bounces, complaints, auto-replies and unsubscribe mails, classified.

``classify`` reads one inbound message and says what it is and which delivery it concerns.
The delivery is found through the opaque token first (the VERP return path or the
List-Unsubscribe mailto the message was sent to, or, inside a complaint or a bounce that
quotes the original, its Message-ID or List-Unsubscribe header), so a report with a redacted
recipient still finds its person. DSNs (RFC 3464) and the many non-standard bounce formats
are read with flufl.bounce, as Mailman does; ARF complaints (RFC 5965) by their report type;
auto-replies by RFC 3834's Auto-Submitted and the usual vendor headers.

What a bounce means for its recipient comes from its RFC 3463 enhanced status
(``mailer.bounces``, the same reading as a refusal at sending): the DSN's ``Status`` field
of the failed recipient, else its ``Diagnostic-Code``, else a status in the report's own
text (never in the quoted original). A bounce that names none is hard when flufl.bounce
reads it as a permanent failure, and soft otherwise; the common non-standard reports that
flufl.bounce cannot read (a notice from ``ndr@``, ``MAILER-DAEMON`` or an empty sender,
InterScan's "could not be delivered", "mail box space not enough") are soft: they are
reported often enough to be real, and too loosely to suppress anyone on their word.

The opt-in store acts on the outcome through ``FeedbackSink`` and keeps the raw message
through ``InboundStore``: this package declares them, ``subscriptions`` implements them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import parseaddr
from enum import StrEnum
from typing import Protocol

from flufl.bounce import all_failures

from mailer.bounces import Verdict, enhanced_status, verdict
from mailer.verp import TOKEN_LENGTH, DeliveryTokens


class FeedbackKind(StrEnum):
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    blocked = "blocked"  # refused for policy or content (5.7.x): nobody is suppressed
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    auto_reply = "auto_reply"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Feedback:
    kind: FeedbackKind
    delivery_id: int | None
    detail: str = ""
    status: str | None = None  # the RFC 3463 enhanced status a bounce gave, if any


BOUNCE_KINDS = {
    Verdict.hard: FeedbackKind.hard_bounce,
    Verdict.soft: FeedbackKind.soft_bounce,
    Verdict.block: FeedbackKind.blocked,
}


def bounce(
    delivery_id: int | None, detail: str, status: str | None, text: str = "", *, permanent: bool
) -> Feedback:
    """The feedback of a bounce, by ``mailer.bounces``' one reading of its enhanced
    ``status``, its own words (``text``) and whether it is known to be ``permanent``."""
    found = verdict(status, None, text, permanent=permanent) or Verdict.soft
    return Feedback(BOUNCE_KINDS[found], delivery_id, detail, status)


def refusal(delivery_id: int, code: int | None, reply: str) -> Feedback | None:
    """A failure at sending (a relay's refusal, or giving up on a deferral) as feedback,
    read as a bounce with the same status would be; None when it names no SMTP failure
    (a message that could not be composed, say)."""
    status = enhanced_status(reply)
    if code is None and status is None:
        return None
    found = verdict(status, code, reply)
    if found is None:
        return None
    return Feedback(BOUNCE_KINDS[found], delivery_id, reply, status)


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
    reported = _reported(message)
    if permanent or temporary or reported.status is not None:
        return bounce(
            delivery_id,
            _describe(permanent or temporary),
            reported.status,
            reported.text,
            permanent=reported.final or bool(permanent),
        )
    # Only now: real DSNs carry "Auto-Submitted: auto-replied" too (RFC 3834).
    if is_auto_reply(message):
        return Feedback(FeedbackKind.auto_reply, delivery_id, "auto-reply ignored")
    if delivery_id is not None and _looks_like_bounce(message, reported.text):
        return bounce(delivery_id, "non-standard bounce", None, reported.text, permanent=False)
    return Feedback(FeedbackKind.unknown, delivery_id, "not a bounce, complaint or unsubscribe")


@dataclass(frozen=True, slots=True)
class _Reported:
    """What a bounce says in its own words (never those of the original it quotes)."""

    status: str | None  # the most specific enhanced status it gives
    final: bool  # the recipient's ``Action: failed``, or a class 5 status
    text: str  # the failed recipient's delivery-status fields and the report's text parts


def _reported(message: Message) -> _Reported:
    said: list[str] = []
    action = ""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status" or action:
            continue
        blocks = part.get_payload()
        for fields in blocks if isinstance(blocks, list) else []:
            if not isinstance(fields, Message):
                continue
            action = str(fields.get("Action", "")).strip().lower()
            if action in ("failed", "delayed"):
                # Status first, then Diagnostic-Code, then the rest (X400 and vendor fields).
                order = sorted(
                    fields.keys(),
                    key=lambda k: (k.lower() != "status", k.lower() != "diagnostic-code"),
                )
                said += [f"{key}: {fields.get(key, '')}" for key in order]
                break
            action = ""
    said += _report_texts(message)
    statuses = [found for text in said if (found := enhanced_status(text)) is not None]
    defined = [status for status in statuses if status.split(".")[1] != "0"]
    status = next(iter(defined or statuses), None)
    final = action == "failed" or (status or "").startswith("5")
    return _Reported(status, final, "\n".join(said))


def _report_texts(message: Message) -> list[str]:
    """The text parts a bounce wrote itself, leaving out any quoted original message."""
    texts: list[str] = []
    stack: list[Message] = [message]
    while stack:
        part = stack.pop()
        kind = part.get_content_type()
        if kind in ("message/rfc822", "text/rfc822-headers", "message/delivery-status"):
            continue
        if part.is_multipart():
            payload = part.get_payload()
            inner = payload if isinstance(payload, list) else []
            stack.extend(p for p in reversed(inner) if isinstance(p, Message))
        elif kind == "text/plain":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                texts.append(_decoded(body, part.get_content_charset()))
    return texts


def _decoded(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", "replace")


def _describe(addresses: frozenset[bytes]) -> str:
    return "failed: " + ", ".join(sorted(a.decode("utf-8", "replace") for a in addresses))[:400]


_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|ndr|nobody|bounces?)\b")
_BOUNCE_TEXT = re.compile(
    r"could not be delivered|cannot be delivered|undeliverable|delivery (has )?failed"
    r"|mail ?box (space not enough|(is )?full)|over quota|returned mail|mail error",
    re.IGNORECASE,
)


def _looks_like_bounce(message: Message, said: str) -> bool:
    """A message to a VERP address that flufl.bounce could not read but that is plainly a
    delivery failure report: a report, or a notice from a mail system's own address (the
    mailer daemon, ``ndr@``, an empty sender) or one whose subject or text (``said``) says
    the mail was not delivered."""
    if message.get_content_type() == "multipart/report":
        return True
    written = str(message.get("From", ""))
    sender = parseaddr(written)[1].lower()
    if "<>" in written or (sender and _BOUNCE_SENDER.match(sender.partition("@")[0])):
        return True
    return bool(_BOUNCE_TEXT.search(f"{message.get('Subject', '')}\n{said}"))
