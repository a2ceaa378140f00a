"""Exceptions raised by the opt-in store and the application around it.

The tree::

    MailmagError                 anything mailmag refuses or cannot do on purpose
    ├── ConfigurationError       a setting is missing or wrong; start-up stops with one line
    ├── StoreError               the database cannot be used as it is
    │   └── SchemaNotCurrent     migrations are not at head
    ├── AlreadyExists            a unique thing (staff account, magazine...) exists already
    ├── InvalidInput             a value a person gave is not acceptable; names the field
    │   └── InvalidFields        several values of one form are not; names each field
    ├── RateLimited              too many requests from one client or for one address
    ├── BadToken                 a signed link or form token is forged, expired or used
    ├── TestLink                 a link from a test message was followed: it does nothing
    └── TransferRefused          a hand-off of personal data the notice did not promise

Each message names what is wrong in words an operator can act on.
"""

from __future__ import annotations


class MailmagError(Exception):
    """Base of every error mailmag raises on purpose."""


class ConfigurationError(MailmagError):
    """A setting is missing, malformed or unsafe; the message names the setting."""


class StoreError(MailmagError):
    """The database cannot be reached or used."""


class SchemaNotCurrent(StoreError):
    """The database schema is not at the latest migration."""


class AlreadyExists(MailmagError):
    """Creating something unique that exists already."""


class InvalidInput(MailmagError):
    """A submitted value is not acceptable; ``field`` names it for the form."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    @property
    def problems(self) -> dict[str, str]:
        """Every field refused, with its message (here one)."""
        return {self.field: self.message}


class InvalidFields(InvalidInput):
    """Several submitted values are not acceptable: ``problems`` maps each field to its
    message, so a form can show them all at once (``field`` and ``message`` are the first)."""

    def __init__(self, problems: dict[str, str]) -> None:
        field, message = next(iter(problems.items()))
        super().__init__(field, message)
        self._problems = dict(problems)
        self.args = ("; ".join(f"{name}: {text}" for name, text in problems.items()),)

    @property
    def problems(self) -> dict[str, str]:
        return dict(self._problems)


class RateLimited(MailmagError):
    """Too many requests; ``retry_after`` seconds until the next one may succeed."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadToken(MailmagError):
    """A signed token is forged, expired, meant for another action, or already used."""


class TestLink(MailmagError):
    """A link of a test message (its token names ``mailer.verp.TEST_DELIVERY``) was
    followed; ``action`` is what the link does in a real message. Nothing happens: a page
    says it was a test."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


class TransferRefused(MailmagError):
    """A transfer (export, provision) of personal data that the notice does not allow."""
