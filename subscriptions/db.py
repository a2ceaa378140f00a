"""The database engine: one per process, tuned for each supported backend.

SQLite (the embedded default) is opened in WAL mode with ``synchronous=FULL`` so that a
commit, once acknowledged, survives a power cut (the consent ledger depends on it), with
foreign keys enforced and a generous busy timeout. Transactions are real (a consistent
snapshot from the first read). Work that writes goes through ``for_writing(engine)``, whose
transactions start with ``BEGIN IMMEDIATE``: they wait their turn for the write lock up
front, where a transaction that read first and wrote later would fail with "database is
locked" when another writer got in between. Reads never block writers (WAL). A new
database file is created 0600 (``mailer.private_files``), and its companions with it.

PostgreSQL is driven by psycopg 3 with a connection pool sized for a web process plus a
worker in the same process.

On both, an error's text never holds a statement's parameters (addresses, names: personal
data in logs), and a connection taken on the thread of an event loop that runs mailmag's
work (``guard_loop``) is reported as a ``BlockingDatabaseCall`` warning: it stalls every
request (the suite turns it into an error). ``outage_reason`` and ``storage_reason`` tell a
database that is away, busy, full or read-only from any other error.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import traceback
import warnings
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Insert, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import SQLModel

from mailer.private_files import PRIVATE_FILE, create_private
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
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            self._file = os.open(self.lock_path, flags, PRIVATE_FILE)
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


class BlockingDatabaseCall(RuntimeWarning):
    """A database connection was taken on a thread that runs an event loop: every request
    and background task of that loop waits for the database meanwhile (and, on SQLite, a
    loop that waits for the write lock may be the one that must release it)."""


_PACKAGES = tuple(
    str(Path(__file__).resolve().parents[1] / name) for name in ("subscriptions", "mailer", "tests")
)
_THIS_FILE = str(Path(__file__).resolve())


def _caller() -> str | None:
    """The innermost frame of mailmag's own code below the pool, or None if that is a
    test's own body (a test may block its own loop; the code it calls may not)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(_PACKAGES) and frame.filename != _THIS_FILE:
            if frame.filename.startswith(_PACKAGES[2]):
                return None
            return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
    return None


_guarded: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def guard_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Report every connection taken on ``loop``'s thread while it runs mailmag's work (the
    app's loop from its start-up, a CLI command's): not every loop in a process is ours (a
    browser driver's, in the tests, runs its own in the main thread)."""
    _guarded.add(loop)


def _on_checkout(*_args: Any) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker thread: where database work belongs
    if loop not in _guarded:
        return
    where = _caller()
    if where is not None:
        warnings.warn(
            f"a database connection taken on the event loop's thread, at {where}",
            BlockingDatabaseCall,
            stacklevel=2,
        )


# SQLite's primary result codes for a store that cannot write: READONLY, IOERR, FULL, CANTOPEN;
# and for one that is there but cannot serve now: BUSY, LOCKED, PROTOCOL.
_SQLITE_STORAGE = {8, 10, 13, 14}
_SQLITE_UNAVAILABLE = _SQLITE_STORAGE | {5, 6, 15}
# PostgreSQL's SQLSTATE for the same: class 53 (insufficient resources: disk full, out of
# memory), class 58 (system error: I/O) and 25006 (a read-only transaction: a standby, or
# read-only by setting); and connection exceptions (08), operator intervention (57P: shut
# down, starting up), a lock not available (55P03), a statement cancelled by its timeout.
_PG_STORAGE = ("53", "58", "25006")
_PG_UNAVAILABLE = (*_PG_STORAGE, "08", "57P", "55P03", "57014")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _driver_reason(
    error: BaseException | None, sqlite: set[int], pg: tuple[str, ...]
) -> str | None:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in sqlite:
        return _first_line(error)  # type: ignore[arg-type]
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and state.startswith(pg):
        return _first_line(error)  # type: ignore[arg-type]
    return None


def storage_reason(error: BaseException | None) -> str | None:
    """Why the database refused to write, if ``error`` (a driver's) says it is full, has
    an I/O error or is read-only; None otherwise."""
    return _driver_reason(error, _SQLITE_STORAGE, _PG_STORAGE)


def outage_reason(error: BaseException) -> str | None:
    """Why the store could not serve, if ``error`` says it is away, busy, full or
    read-only (the request may be tried again); None for any other error (a fault of ours).
    The reason is the database's first line, which holds no parameters."""
    if isinstance(error, StoreError | PoolTimeout):
        return _first_line(error)
    if not isinstance(error, DBAPIError):
        return None
    orig = error.orig
    if error.connection_invalidated:
        return _first_line(orig or error)
    known = _driver_reason(orig, _SQLITE_UNAVAILABLE, _PG_UNAVAILABLE)
    if known is not None:
        return known
    # psycopg's errors without an SQLSTATE come from the connection itself (refused, lost).
    if isinstance(error, OperationalError) and getattr(orig, "sqlstate", "") is None:
        return _first_line(orig or error)
    return None


def make_engine(url: URL | str, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` with the backend's durability settings applied."""
    options = {} if "poolclass" in kwargs else _default_options(url)
    engine = create_engine(url, **({"hide_parameters": True} | options | kwargs))
    event.listen(engine, "checkout", _on_checkout)
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        if on_disk and Path(database).parent.is_dir():
            # 0600 from the start; SQLite gives its -wal, -shm and -journal files this mode.
            # (A missing directory is left for SQLite to report when it first connects.)
            create_private(Path(database))
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
