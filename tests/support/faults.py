"""Store faults for the reliability tests: a store that reads but cannot write (as a full disk
does), and a write stall (another transaction holding the write lock for a while).

``WriteFault`` makes every INSERT, UPDATE or DELETE that goes through an engine raise the
driver's own full-disk error while it is on, from a SQLAlchemy event, so SQLAlchemy wraps it
as it wraps the real one; reads work. ``write_stall`` holds the lock every writer of the
delivery queue needs, from another connection: on SQLite the database's write lock
(``BEGIN IMMEDIATE``), on PostgreSQL an ``EXCLUSIVE`` lock on ``delivery`` (reads go on,
claims, renewals and recorded outcomes wait). Both act on other processes too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from mailer.transactions import for_writing

_WRITES = ("INSERT", "UPDATE", "DELETE")


class WriteFault:
    """While ``on``, writes through ``engine`` fail with a full disk's error; ``refused``
    counts them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.on = False
        self.refused = 0
        self._error: type[Exception] = (
            psycopg.errors.DiskFull
            if engine.dialect.name == "postgresql"
            else sqlite3.OperationalError
        )

    def _check(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if self.on and statement.lstrip().upper().startswith(_WRITES):
            self.refused += 1
            if self._error is sqlite3.OperationalError:
                raise sqlite3.OperationalError("database or disk is full")
            raise self._error("could not extend file: No space left on device")

    def __enter__(self) -> WriteFault:
        event.listen(self.engine, "before_cursor_execute", self._check)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._check)


@contextmanager
def write_stall(engine: Engine) -> Iterator[None]:
    """Hold the delivery queue's write lock until the block ends."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE delivery IN EXCLUSIVE MODE"))
            yield
        return
    with for_writing(engine).begin() as conn:  # BEGIN IMMEDIATE: the write lock, held
        conn.execute(text("SELECT 1"))
        yield
