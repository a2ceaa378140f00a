"""The scheduler: APScheduler with its SQLAlchemy job store in mailmag's own database.

Only the leader (``mailer.leader``) runs it. Its jobs live in the ``apscheduler_jobs``
table, so their next run times survive a restart:

- ``start-due-issues`` every two seconds starts each issue whose ``scheduled_at`` has come
  (the issue table is the source of truth for schedules, so an issue scheduled by any web
  process, or while the leader was down, is started the moment a leader looks), and
  finishes queuing the audience of any issue whose expansion was cut short;
- ``housekeeping`` every hour runs the maintenance the composition root hands in.

Nothing of the scheduler runs on the event loop. Leading, the job store's reads and writes
and the jobs themselves all run in threads of their own (APScheduler's
``BackgroundScheduler``): a job store that waits for a database lock then never waits on
the thread that must release it. A job store call that fails or times out (the database
is away, locked or full) is logged and tried again a moment later; it never stops the
scheduler. Before each sweep the leader checks that it still holds its lock (a database
restart takes a PostgreSQL advisory lock away with its connection) and steps down if not,
so two processes never sweep together. ``health`` says whether the sweeps are on time, for
``/readyz``.

Job functions are looked up by name in this module (the job store keeps references, not
closures) and find their services through the running ``Scheduler``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import or_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.errors import MailerError
from mailer.leader import LeaderLock
from mailer.models import Issue, IssueStatus

log = logging.getLogger(__name__)

_running: Scheduler | None = None
LONG_SWEEP = timedelta(minutes=10)  # a sweep may expand a big audience; past this it is stuck


def start_due_issues() -> None:
    if _running is not None:
        _running.sweep_once()


def housekeeping() -> None:
    if _running is not None and _running.housekeeping is not None and _running.still_leads():
        _running.housekeeping()


class SharedEngineJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The job store on mailmag's own engine, which it must not dispose of at shutdown
    (the stock one does, closing connections the rest of the process still uses)."""

    def shutdown(self) -> None:
        return None


class _SteadyScheduler(BackgroundScheduler):  # type: ignore[misc]
    """APScheduler's background scheduler, made to survive its job store.

    APScheduler retries a failed *read* of due jobs, but a failed *write* (moving a job's
    next run time, ``UPDATE apscheduler_jobs``) raises out of its loop and stops the
    scheduler for good. Here any failure of one round is logged and the round is tried
    again after ``jobstore_retry_interval``: a job whose next run time could not be stored
    is simply found due again (and coalesced) then."""

    def __init__(self, on_round: Callable[[str | None], None], **options: Any) -> None:
        super().__init__(**options)
        self._on_round = on_round

    def _process_jobs(self) -> float | None:
        try:
            wait: float | None = super()._process_jobs()
        except Exception as exc:
            log.warning("the scheduler's job store failed, trying again soon: %s", _reason(exc))
            self._on_round(_reason(exc))
            return float(self.jobstore_retry_interval)
        self._on_round(None)
        return wait


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


@dataclass(frozen=True, slots=True)
class SchedulerHealth:
    """What ``/readyz`` needs to know: ``problem`` is None while all is well."""

    leading: bool
    problem: str | None = None


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        start_issue: Callable[[int], object],
        *,
        housekeeping: Callable[[], object] | None = None,
        on_started: Callable[[], None] = lambda: None,
        sweep: timedelta = timedelta(seconds=2),
        stale_after: timedelta | None = None,
        lead_retry: timedelta = timedelta(seconds=5),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.start_issue = start_issue
        self.housekeeping = housekeeping
        self.on_started = on_started
        self.sweep = sweep
        # How long the sweeps may stop before /readyz says so: five sweeps, at least 10 s.
        self.stale_after = stale_after or max(5 * sweep, timedelta(seconds=10))
        self.lead_retry = lead_retry.total_seconds()  # between tries to take the lock
        self.leader = LeaderLock(engine)
        self.sweeps = 0  # sweeps run while leading (a figure for /metrics and the tests)
        self._clock = clock
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading_since: float | None = None
        self._last_round: float | None = None  # the job store was last read and written
        self._round_error: str | None = None
        self._sweep_started: float | None = None
        self._sweep_ended: float | None = None

    # --- the jobs ------------------------------------------------------------------------------

    def start_due(self) -> int:
        """Start every scheduled issue whose time has come, and queue the rest of any
        audience still being queued; return how many issues were started or resumed."""
        with Session(self.engine) as session:
            due = session.exec(
                select(Issue.id)
                .where(
                    or_(
                        (col(Issue.status) == IssueStatus.scheduled)
                        & (col(Issue.scheduled_at) <= utcnow()),
                        col(Issue.status).in_([IssueStatus.sending, IssueStatus.paused])
                        & col(Issue.expansion_cursor).is_not(None),
                    )
                )
                .order_by(col(Issue.id))
            ).all()
        started = 0
        for issue_id in due:
            if issue_id is None:
                continue
            try:
                self.start_issue(issue_id)
                started += 1
            except MailerError as exc:  # cancelled or changed meanwhile, or not compliant
                log.warning("issue %s did not start: %s", issue_id, exc)
        if started:
            self.on_started()
        return started

    def sweep_once(self) -> int:
        """The ``start-due-issues`` job: one sweep, only while this process still leads."""
        if not self.still_leads():
            return 0
        self._sweep_started = self._clock()
        try:
            started = self.start_due()
        finally:
            self._sweep_ended = self._clock()
        self.sweeps += 1
        log.debug("scheduler sweep %d: %d issue(s) started", self.sweeps, started)
        return started

    def still_leads(self) -> bool:
        """Whether the lock is still ours; if not, the leader steps down (asynchronously:
        the leading thread shuts the scheduler down) and nothing more is swept."""
        if self._lost.is_set():
            return False
        if self.leader.still_held():
            return True
        log.warning("this process lost the scheduler lock; it steps down")
        self._lost.set()
        return False

    # --- leading -------------------------------------------------------------------------------

    def _try_lead(self) -> bool:
        try:
            return self.leader.try_acquire()
        except (SQLAlchemyError, OSError) as exc:  # the database is away: try again later
            log.warning("cannot take the scheduler lock: %s", _reason(exc))
            return False

    def _round(self, error: str | None) -> None:
        self._round_error = error
        if error is None:
            self._last_round = self._clock()

    def _lead(self) -> None:
        """Run APScheduler until asked to stop or until the lock is lost."""
        global _running
        seconds = self.sweep.total_seconds()
        scheduler = _SteadyScheduler(
            self._round,
            jobstores={"default": SharedEngineJobStore(engine=self.engine)},
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            jobstore_retry_interval=seconds,
            timezone="UTC",
        )
        scheduler.add_job(
            "mailer.scheduler:start_due_issues",
            "interval",
            seconds=seconds,
            id="start-due-issues",
            replace_existing=True,
            next_run_time=utcnow(),
        )
        if self.housekeeping is not None:
            scheduler.add_job(
                "mailer.scheduler:housekeeping",
                "interval",
                hours=1,
                id="housekeeping",
                replace_existing=True,
                next_run_time=utcnow(),
            )
        _running = self
        self._lost.clear()
        self._leading_since = self._clock()
        self._last_round = self._leading_since
        try:
            scheduler.start()
            while not self._stop.is_set() and not self._lost.is_set():
                # The lock is checked before each sweep; here too, so a leader whose sweeps
                # stopped still notices that it lost the lock.
                if self._stop.wait(seconds) or not self.still_leads():
                    break
        finally:
            if scheduler.running:
                # A sweep or housekeeping under way finishes first (each is a few short
                # transactions), so no job outlives the scheduler with a connection in hand.
                scheduler.shutdown(wait=True)
            _running = None
            self._leading_since = None
            self.leader.release()

    def _run(self) -> None:
        """Try to lead every few seconds; once leading, run the jobs; lead again after
        losing the lock, until ``stop``."""
        while not self._stop.is_set():
            if not self._try_lead():
                self._stop.wait(self.lead_retry)
                continue
            log.info("this process leads the scheduler")
            try:
                self._lead()
            except Exception:  # never let the thread die: lead again a moment later
                log.exception("the scheduler stopped; this process tries to lead again")
            # Having stepped down, compete again only after the usual interval: the process
            # that took the lock meanwhile keeps it.
            self._stop.wait(self.lead_retry)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.leader.release()

    # --- health --------------------------------------------------------------------------------

    def health(self) -> SchedulerHealth:
        """Whether this process leads, and if it does, what is wrong with its sweeps: no
        round of the job store for ``stale_after``, or no sweep finished within that time
        and none under way (a sweep under way longer than ``LONG_SWEEP`` counts as stuck)."""
        since = self._leading_since
        if since is None:
            return SchedulerHealth(leading=False)
        now = self._clock()
        window = self.stale_after.total_seconds()
        last_round = self._last_round or since
        if now - last_round > window:
            reason = f": {self._round_error}" if self._round_error else ""
            return SchedulerHealth(
                True, f"the scheduler has not read its jobs for {now - last_round:.0f} s{reason}"
            )
        started, ended = self._sweep_started, self._sweep_ended
        running = started is not None and (ended is None or ended < started)
        if running and started is not None:
            if now - started > LONG_SWEEP.total_seconds():
                return SchedulerHealth(True, f"a sweep has run for {now - started:.0f} s")
            return SchedulerHealth(True)
        last = ended or since
        if now - last > window:
            return SchedulerHealth(True, f"the scheduler has not swept for {now - last:.0f} s")
        return SchedulerHealth(True)
