"""The database engine: one per process, tuned for each supported backend.

SQLite (the embedded default) is opened in WAL mode with ``synchronous=FULL`` so that a
commit, once acknowledged, survives a power cut (the consent ledger depends on it), with
foreign keys enforced and a generous busy timeout. Transactions are real (a consistent
snapshot from the first read). Work that writes goes through ``for_writing(engine)``, whose
transactions start with ``BEGIN IMMEDIATE``: they wait their turn for the write lock up
front, where a transaction that read first and wrote later would fail with "database is
locked" when another writer got in between. Reads never block writers (WAL).

PostgreSQL is driven by psycopg 3 with a connection pool sized for a web process plus a
worker in the same process.
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

from sqlalchemy import Insert, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from mailer.transactions import BEGIN_OPTION, for_writing
from subscriptions.errors import StoreError

__all__ = ["check_connection", "for_writing", "make_engine"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would defer BEGIN; we issue it ourselves below.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


class _WriterTurn:
    """Writers take turns on a fair lock before ``BEGIN IMMEDIATE``: threads of one process
    on a lock in memory, processes on one database on an ``flock`` of a file beside it.

    SQLite's own wait for its write lock is a busy loop that sleeps up to 100 ms between
    tries, so writers contending for it lose most of their time asleep (a web request
    waited a second behind another process's commit). Queueing here first, where a waiter
    wakes the moment the lock is free, leaves SQLite's wait to writers that do not take the
    turn (an older mailmag, the sqlite3 shell). A plain lock, not a re-entrant one: a
    transaction may end in another thread than it began in (a request's session is closed
    by its dependency); one that opens a second write transaction while holding its turn
    fails after the busy timeout, as it would in SQLite."""

    def __init__(self, lock_path: str | None) -> None:
        self.lock = threading.Lock()
        self.lock_path = lock_path
        self._file: int | None = None

    def _file_lock(self) -> int | None:
        if self.lock_path is None:
            return None
        if self._file is None:
            self._file = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._file

    def begin(self, conn: Any) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        if mode == "IMMEDIATE":
            if not self.lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
                raise StoreError("database is locked: no turn to write within the busy timeout")
            conn.info[_HOLDS_TURN] = True
            try:
                shared = self._file_lock()
                if shared is not None:
                    fcntl.flock(shared, fcntl.LOCK_EX)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                self.end(conn)
                raise
            return
        conn.exec_driver_sql(f"BEGIN {mode}")

    def end(self, conn: Any) -> None:
        if conn.info.pop(_HOLDS_TURN, False):
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self.lock.release()


_HOLDS_TURN = "mailmag_holds_writer_turn"


def make_engine(url: URL | str, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` with the backend's durability settings applied."""
    options = {} if "poolclass" in kwargs else _default_options(url)
    engine = create_engine(url, **(options | kwargs))
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        turn = _WriterTurn(f"{database}-writer.lock" if on_disk else None)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", turn.begin)
        event.listen(engine, "commit", turn.end)
        event.listen(engine, "rollback", turn.end)
    return engine


def _default_options(url: URL | str) -> dict[str, Any]:
    if str(url).startswith("sqlite"):
        # Enough kept connections for the request threads and the loops: a connection over the
        # pool's size is closed on return, and opening one costs its PRAGMAs.
        return {
            "connect_args": {"check_same_thread": False, "timeout": 30},
            "pool_size": 20,
            "max_overflow": 20,
        }
    return {"pool_size": 10, "max_overflow": 10, "pool_pre_ping": True}


def check_connection(engine: Engine) -> None:
    """Raise ``StoreError`` with a readable reason if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        reason = str(orig) if orig is not None else str(exc)
        raise StoreError(reason.strip().splitlines()[0]) from None


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for bulk statements that skip the ORM's per-row work."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


def insert_new(model: type[SQLModel], dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``model``'s table: a row whose unique key
    is taken is left out, and its ``RETURNING`` comes back empty (psycopg reports no row
    count for it)."""
    maker = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return maker(table_of(model)).on_conflict_do_nothing()


def refresh_statistics(bind: Engine | Connection, *tables: str) -> None:
    """After a bulk load on PostgreSQL, refresh the planner's statistics of ``tables`` at once
    instead of waiting for autovacuum: with a table believed empty, the planner picks plans
    that scan every row (a batch of recipients took 200 ms instead of 0.1). Given a
    connection, on its transaction (whose own new rows ANALYZE counts); given an engine, on
    a connection of its own. SQLite plans well without statistics, so nothing is done there."""
    if bind.dialect.name != "postgresql":
        return
    if isinstance(bind, Connection):
        for table in tables:
            bind.exec_driver_sql(f'ANALYZE "{table}"')
        return
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        refresh_statistics(conn, *tables)
