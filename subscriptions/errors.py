"""Exceptions raised by the opt-in store and the application around it.

The tree::

    MailmagError                 anything mailmag refuses or cannot do on purpose
    ├── ConfigurationError       a setting is missing or wrong; start-up stops with one line
    ├── StoreError               the database cannot be used as it is
    │   └── SchemaNotCurrent     migrations are not at head
    └── AlreadyExists            a unique thing (staff account, magazine...) exists already

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
