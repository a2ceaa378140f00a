"""What ``/readyz`` checks: that this process can do its work, not only that it runs.

Ready means all of these hold:

- the database answers and its schema is at the latest migration;
- it takes a write: one row of ``store_probe`` is written and committed (at most every
  ``PROBE_EVERY`` seconds, one probe at a time, and a probe that takes longer than
  ``PROBE_SECONDS`` counts as failed: a write lock nobody gets is as bad as a full disk);
- no write was refused for want of storage (disk full, I/O error, read-only database) in
  the last ``STORAGE_FAILURE_SECONDS``: a tiny probe may still fit where real writes no
  longer do, so the store's own refusals count too (every error of the engine is watched
  while the process runs: ``watch``);
- if this process leads the scheduler, its sweeps are on time (``Scheduler.health``).

Each problem is a sentence an operator can act on; the answer lists them all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import event, update
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailer.clock import utcnow
from mailer.scheduler import Scheduler
from subscriptions.db import check_connection, for_writing, storage_reason
from subscriptions.errors import StoreError
from subscriptions.models import StoreProbe
from subscriptions.schema import revision_state

PROBE_SECONDS = 2.0
PROBE_EVERY = 5.0
STORAGE_FAILURE_SECONDS = 30.0


def write_probe(engine: Engine) -> None:
    """Write and commit the probe's row; raises ``StoreError`` with the database's reason."""
    try:
        with Session(for_writing(engine)) as session:
            moved = session.connection().execute(
                update(StoreProbe).where(StoreProbe.id == 1).values(written_at=utcnow())  # type: ignore[arg-type]
            )
            if not moved.rowcount:
                session.add(StoreProbe(id=1, written_at=utcnow()))
            session.commit()
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        raise StoreError(str(orig if orig is not None else exc).strip().splitlines()[0]) from None


@dataclass(frozen=True, slots=True)
class Verdict:
    problems: list[str]
    schema: str | None


@dataclass
class Readiness:
    engine: Engine
    probe_seconds: float = PROBE_SECONDS
    probe_every: float = PROBE_EVERY
    storage_failure_seconds: float = STORAGE_FAILURE_SECONDS
    _failure: tuple[float, str] | None = None  # (time.monotonic(), reason)
    _probing: asyncio.Future[str | None] | None = None
    _probed_at: float = float("-inf")
    _probe_problem: str | None = None

    def watch(self) -> None:
        """Keep every storage refusal of the engine (any session's) until ``unwatch``."""
        event.listen(self.engine, "handle_error", self._on_error)

    def unwatch(self) -> None:
        if event.contains(self.engine, "handle_error", self._on_error):
            event.remove(self.engine, "handle_error", self._on_error)

    def _on_error(self, context: ExceptionContext) -> None:
        reason = storage_reason(context.original_exception)
        if reason is not None:
            self._failure = (time.monotonic(), reason)

    def _store(self) -> tuple[str | None, str | None]:
        """A problem of the store itself, if any, and the schema's revision."""
        try:
            check_connection(self.engine)
            state = revision_state(self.engine)
        except StoreError as exc:
            return f"database: {exc}", None
        if not state.at_head:
            return (
                f"schema at {state.current or 'nothing'}, head is {state.head}: "
                "run `mailmag migrate`"
            ), state.current
        return None, state.current

    def _write(self) -> str | None:
        try:
            write_probe(self.engine)
        except StoreError as exc:
            return f"the database refused a write: {exc}"
        return None

    async def _probe(self) -> str | None:
        """The write probe's verdict, fresh enough; one probe in flight at a time, so a
        stuck one holds one thread however often the probe is asked."""
        now = time.monotonic()
        if self._probing is None and now - self._probed_at < self.probe_every:
            return self._probe_problem
        if self._probing is None:
            self._probing = asyncio.ensure_future(run_in_threadpool(self._write))
            self._probing.add_done_callback(self._probed)
        try:
            return await asyncio.wait_for(asyncio.shield(self._probing), self.probe_seconds)
        except TimeoutError:
            return f"a write did not finish within {self.probe_seconds:g} s"

    def _probed(self, done: asyncio.Future[str | None]) -> None:
        self._probing = None
        self._probed_at = time.monotonic()
        self._probe_problem = done.result() if not done.cancelled() else "the probe stopped"

    async def check(self, scheduler: Scheduler | None) -> Verdict:
        """Every reason this process is not ready (none when it is), and the schema."""
        store, schema = await run_in_threadpool(self._store)
        if store is not None:
            return Verdict([store], schema)  # nothing more can be asked of such a store
        problems = []
        written = await self._probe()
        if written is not None:
            problems.append(written)
        if self._failure is not None:
            at, reason = self._failure
            ago = time.monotonic() - at
            if ago < self.storage_failure_seconds:
                problems.append(f"the database refused a write {ago:.0f} s ago: {reason}")
        if scheduler is not None:
            health = scheduler.health()
            if health.problem is not None:
                problems.append(health.problem)
        return Verdict(problems, schema)
