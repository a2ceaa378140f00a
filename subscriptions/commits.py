"""Group commit: many short write transactions from many threads, committed together.

On SQLite every write transaction waits its turn for the one write lock, and each commit
waits for ``fsync``. Under load the request threads queue on the lock while the one holding
it keeps losing the GIL to them, and every answer pays for its own ``fsync``. A
``GroupCommit`` instead lets one thread at a time write for all: it takes every job waiting,
runs each in a savepoint of one transaction on one connection, commits once, and only then
answers each caller (a job that fails is rolled back to its savepoint alone, and its caller
gets its exception; a failed commit fails every job of the batch). So nothing is
acknowledged before it is durable, as before, but a batch pays for one ``BEGIN IMMEDIATE``
and one ``fsync``.

One thread writes for all: the group commit's writer, started by the first job that finds
none and gone again after ``LINGER`` seconds without work. While batches follow each other
without a pause it keeps its connection (no pool checkout and no ping per batch); after a
pause, or a failed batch, it takes one that the pool checks. It takes up to ``max_batch`` jobs
in order of arrival, so no caller waits longer than the batches queued before its own. A
caller from a thread blocks on an event (``run``, ``run_together``); a coroutine awaits a
future instead (``run_together_async``), so an async route hands its write over without
holding a worker thread, and the event loop and the writer are the only threads that take
turns for the GIL under load.

Jobs must be short, touch the database only through the connection they are given, and be
safe to run inside a transaction that other jobs share: their writes become visible to the
later jobs of the batch, and are only durable once ``run`` returns.

Jobs of one kind can also run *together* (``run_together``): the jobs of a batch that name the
same function are handed to it as one list, in one savepoint, so a hundred one-click
unsubscribes cost a few statements instead of a few hundred. The function returns one
outcome per item, in order: a value, or an exception for an item that failed on its own
(and wrote nothing). Should the function raise, its savepoint is rolled back and each of its
items runs again alone, in its own savepoint, so one bad item still fails only its caller. A
batch that is all of one kind, as under load, needs no savepoint: its transaction is rolled
back instead, and the items run alone in a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy.engine import Connection, Engine, Transaction
from sqlalchemy.exc import SQLAlchemyError

from mailer.transactions import for_writing

T = TypeVar("T")
Item = TypeVar("Item")
# Items in, one outcome per item out: a value, or the exception that item alone met.
Together = Callable[[Connection, list[Item]], Sequence[T | Exception]]
LINGER = 1.0  # seconds the writer waits for more work before it ends


class _Ready(Protocol):
    def set(self) -> None: ...


class _Answered:
    """A job's "committed or failed" for a coroutine: set from the writer's thread, awaited
    on the caller's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():  # a caller that was cancelled does not wait
            self.future.set_result(None)


@dataclass(eq=False)
class _Job(Generic[T]):
    work: Callable[[Connection], T] | None
    together: Together[Any, T] | None = None
    item: Any = None
    ready: _Ready = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        value: T = self.result
        return value


class GroupCommit:
    def __init__(self, engine: Engine, max_batch: int = 64) -> None:
        self.engine = for_writing(engine)
        self.max_batch = max_batch
        self._turn = threading.Condition()
        self._waiting: list[_Job[Any]] = []
        self._writer: threading.Thread | None = None  # set while a writer takes jobs
        self._closing = False

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction; return once that transaction is committed."""
        return self._wait(_Job(work))

    def run_together(self, together: Together[Item, T], item: Item) -> T:
        """Run ``together(conn, [item, ...])`` in a write transaction, with the items of every
        job of the batch that names the same ``together``; return this item's outcome once
        that transaction is committed (raise it, if it is an exception)."""
        return self._wait(_Job(None, together, item))

    async def run_together_async(self, together: Together[Item, T], item: Item) -> T:
        """``run_together`` for a coroutine: awaits the commit without blocking a thread. A
        caller cancelled meanwhile does not undo its job: it is committed all the same."""
        job: _Job[T] = _Job(None, together, item, _Answered())
        self._submit(job)
        await cast("_Answered", job.ready).future
        return job.outcome()

    def _wait(self, job: _Job[T]) -> T:
        self._submit(job)
        cast("threading.Event", job.ready).wait()
        return job.outcome()

    def _submit(self, job: _Job[Any]) -> None:
        with self._turn:
            self._waiting.append(job)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write, name="group-commit", daemon=True
                )
                self._writer.start()
            else:
                self._turn.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Let the writer finish what waits and give its connection back now, instead of
        lingering with it (the app calls this as it stops: a connection held by a thread
        past the engine's end is never closed). A later job starts a new writer."""
        with self._turn:
            writer = self._writer
            self._closing = True
            self._turn.notify()
        if writer is not None:
            writer.join(timeout)
        with self._turn:
            self._closing = False

    def _write(self) -> None:
        conn: Connection | None = None  # kept from batch to batch while the writer lives
        try:
            while True:
                with self._turn:
                    idle = not self._waiting
                    if idle and not self._turn.wait_for(
                        lambda: self._waiting or self._closing, LINGER
                    ):
                        self._writer = None
                        return
                    if not self._waiting:  # closing, with nothing left to write
                        self._writer = None
                        return
                    batch = self._waiting[: self.max_batch]
                    del self._waiting[: self.max_batch]
                if idle:  # it sat unused (the server may have restarted): one the pool checks
                    _closed(conn)
                    conn = None
                try:
                    conn = conn or self.engine.connect()
                    self._commit(conn, batch)
                except BaseException as exc:  # the batch did not commit: nothing of it holds
                    for job in batch:
                        job.error = job.error or exc
                    _closed(conn)  # perhaps broken: the next batch takes a fresh one
                    conn = None
                finally:
                    for job in batch:
                        job.ready.set()
        finally:
            _closed(conn)

    def _commit(self, conn: Connection, batch: list[_Job[Any]]) -> None:
        groups = _groups(batch)
        if len(groups) == 1 and len(batch) > 1 and batch[0].together is not None:
            if self._one_kind(conn, batch):
                return
            groups = [[job] for job in batch]  # the call for all failed: each alone
        with conn.begin():
            for group in groups:
                if group[0].together is not None and len(group) > 1:
                    self._together(conn, group)
                else:
                    for job in group:
                        self._alone(conn, job)

    @staticmethod
    def _one_kind(conn: Connection, batch: list[_Job[Any]]) -> bool:
        """A batch of one kind (the usual one under load) in one call, without a savepoint:
        should the call fail, its whole transaction is rolled back and ``False`` says the
        jobs are still to be done (a failed commit fails them all, as for any batch)."""
        return _call_together(conn, batch, conn.begin())

    def _together(self, conn: Connection, group: list[_Job[Any]]) -> None:
        if not _call_together(conn, group, conn.begin_nested()):
            for job in group:  # each again alone, so only its own caller fails
                self._alone(conn, job)

    @staticmethod
    def _alone(conn: Connection, job: _Job[Any]) -> None:
        savepoint = conn.begin_nested()
        try:
            if job.work is not None:
                job.result = job.work(conn)
            else:
                assert job.together is not None
                job.result = one(job.together, conn, job.item)
        except Exception as exc:  # this job's own failure: undo it alone
            savepoint.rollback()
            job.error = exc
        else:
            savepoint.commit()


def _call_together(conn: Connection, jobs: list[_Job[Any]], transaction: Transaction) -> bool:
    """The jobs' ``together`` called once for all of them in ``transaction`` (the batch's, or
    a savepoint): committed, and each job given its outcome; or, should the call fail, rolled
    back, and ``False``."""
    together = cast("Together[Any, Any]", jobs[0].together)
    try:
        outcomes = together(conn, [job.item for job in jobs])
        if len(outcomes) != len(jobs):
            raise RuntimeError(f"{len(jobs)} items gave {len(outcomes)} outcomes")
    except BaseException as exc:
        transaction.rollback()
        if not isinstance(exc, Exception):
            raise
        return False
    transaction.commit()
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, Exception):
            job.error = outcome
        else:
            job.result = outcome
    return True


def _closed(conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(SQLAlchemyError):  # a broken one is discarded all the same
            conn.close()


def one(together: Together[Item, T], conn: Connection, item: Item) -> T:
    """``together`` for a single item: its outcome, raised if it is an exception."""
    (outcome,) = together(conn, [item])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _groups(batch: list[_Job[Any]]) -> list[list[_Job[Any]]]:
    """The batch's jobs in order of arrival, those that run together gathered at the place of
    the first of them (concurrent requests may be ordered any way: none waited for another)."""
    groups: dict[Any, list[_Job[Any]]] = {}
    for job in batch:
        groups.setdefault(job.together if job.together is not None else job, []).append(job)
    return list(groups.values())
