"""Exceptions raised by the sending engine.

The tree::

    MailerError                  anything the sending engine refuses or cannot do
    ├── TransportError           a message could not be handed to the SMTP relay
    │   ├── TemporaryFailure     4xx reply, timeout or lost connection: retry later
    │   └── PermanentFailure     5xx reply: do not retry this recipient
    ├── TemplateRefused          an issue template breaks a sandbox or budget rule
    ├── NotCompliant             a message would lack the footer or headers the law requires
    ├── HeaderInjection          a header value carries a line break or control character
    ├── InvalidTransition        an issue cannot move from its status to the one asked for
    └── TestSendLimited          a staff member or an issue has had its test sends for now

Transports report per-recipient outcomes as values (``SendResult``), not exceptions, so a
batch never fails as a whole; the exceptions are for callers that send one message and want
to stop on failure (test sends, confirmation mail).
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of every error the sending engine raises on purpose."""


class TransportError(MailerError):
    """A message could not be handed to the relay."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(TransportError):
    """Worth retrying later: 4xx, timeout, refused or dropped connection."""


class PermanentFailure(TransportError):
    """Not worth retrying: the relay answered 5xx for this recipient."""


class TemplateRefused(MailerError):
    """An issue template breaks a rule (unknown name, sandbox escape, too large, too slow)."""


class NotCompliant(MailerError):
    """An issue would go out without what the law requires of every message."""


class HeaderInjection(MailerError):
    """A header value carries a line break or another control character."""


class InvalidTransition(MailerError):
    """An issue cannot go from its current status to the one asked for."""


class TestSendLimited(MailerError):
    """Too many test messages from one staff member or of one issue; ``retry_after``
    seconds until this many may go."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
