"""Column types shared by every table in mailmag.

``mailer`` is the lower layer (``subscriptions`` may import it, never the reverse), so the
types both packages' tables use live here:

- ``UTCDateTime`` stores naive UTC (SQLite has no time zones) and always hands back aware
  UTC datetimes; an aware value in any zone is converted, a naive one is refused.
- Constraints and indexes get predictable names (``NAMING_CONVENTION``), so a later
  migration can alter them by name on both databases.
- ``EnumText`` stores an ``Enum`` by its value as plain text, so adding a member is a code
  change, not a PostgreSQL ``ALTER TYPE``; reading an unknown value fails loudly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

import annotated_types
from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def stored_utc(value: datetime | None) -> datetime | None:
    """How a ``UTCDateTime`` column stores ``value``: naive UTC. A naive value is refused, for
    nobody can tell its zone (statements that bind without the column type use this too)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column; use mailer.clock.utcnow()")
    return value.astimezone(UTC).replace(tzinfo=None)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return stored_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class EnumText(TypeDecorator[Enum]):
    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[Enum], length: int = 24) -> None:
        super().__init__(length)
        self.enum_class = enum_class

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(self.enum_class(value).value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Enum | None:
        return None if value is None else self.enum_class(value)


MAX_ROW_ID = 2**31 - 1  # PostgreSQL's integer; SQLite takes 64 bits, the smaller bound holds
RowId = Annotated[int, annotated_types.Ge(1), annotated_types.Le(MAX_ROW_ID)]
"""An id from outside (a path, a query, a body): refused unless a row could have it."""
