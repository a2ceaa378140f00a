"""Exceptions raised by the sending engine.

The tree::

    MailerError                  anything the sending engine refuses or cannot do
    ├── TransportError           a message could not be handed to the SMTP relay
    │   ├── SMTPReplyError       the relay answered a step with a code the step does not expect
    │   ├── SMTPProtocolError    the relay said something that is not SMTP (an over-long line,
    │   │                        an endless reply, garbage): the connection is thrown away
    │   ├── RelayUnsuitable      the relay lacks what the settings require (STARTTLS, an AUTH
    │   │   │                    mechanism mailmag speaks)
    │   │   └── InsecureRelay    credentials would cross an unencrypted session: never sent
    │   └── MessageTooLarge      the message is over the SIZE the relay announced (RFC 1870)
    ├── TemplateRefused          an issue template breaks a sandbox or budget rule
    ├── NotCompliant             a message would lack the footer or headers the law requires
    ├── HeaderInjection          a header value carries a line break or control character
    ├── InvalidTransition        an issue cannot move from its status to the one asked for
    └── TestSendLimited          a staff member or an issue has had its test sends for now

The SMTP clients (``mailer.smtp``, ``mailer.aiosmtplib_client``) raise the transport errors; the
pooled transport (``mailer.transport``) turns them, with the network's own errors (``OSError``,
``TimeoutError``, ``ssl.SSLError``), into per-recipient outcomes as values (``SendResult``), so
a batch never fails as a whole.
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of every error the sending engine raises on purpose."""


class TransportError(MailerError):
    """A message could not be handed to the relay."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SMTPReplyError(TransportError):
    """The relay answered a step with a code the step does not expect."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}", code=code)
        self.code: int = code
        self.message = message


class SMTPProtocolError(TransportError):
    """The relay said something that is not SMTP; the connection cannot be trusted."""


class RelayUnsuitable(TransportError):
    """The relay does not offer what the settings require (STARTTLS, an AUTH mechanism)."""


class InsecureRelay(RelayUnsuitable):
    """Credentials would be sent over a session that is not encrypted; they never are."""


class MessageTooLarge(TransportError):
    """The message is larger than the relay said it accepts (EHLO SIZE, RFC 1870)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the message is {size} bytes and the relay accepts at most {limit} (SIZE)", code=552
        )
        self.size = size
        self.limit = limit


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
