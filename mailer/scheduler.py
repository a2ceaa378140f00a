"""The scheduler: APScheduler with its SQLAlchemy job store in mailmag's own database.

Only the leader (``mailer.leader``) runs it. Its jobs live in the ``apscheduler_jobs``
table, so their next run times survive a restart:

- ``start-due-issues`` every two seconds starts each issue whose ``scheduled_at`` has come
  (the issue table is the source of truth for schedules, so an issue scheduled by any web
  process, or while the leader was down, is started the moment a leader looks), and
  finishes queuing the audience of any issue whose expansion was cut short;
- ``housekeeping`` every hour runs the maintenance the composition root hands in.

Job functions are looked up by name in this module (the job store keeps references, not
closures) and find their services through the running ``Scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
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


def start_due_issues() -> None:
    if _running is not None:
        _running.start_due()


def housekeeping() -> None:
    if _running is not None and _running.housekeeping is not None:
        _running.housekeeping()


class SharedEngineJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The job store on mailmag's own engine, which it must not dispose of at shutdown
    (the stock one does, closing connections the rest of the process still uses)."""

    def shutdown(self) -> None:
        return None


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        start_issue: Callable[[int], object],
        *,
        housekeeping: Callable[[], object] | None = None,
        on_started: Callable[[], None] = lambda: None,
        sweep: timedelta = timedelta(seconds=2),
    ) -> None:
        self.engine = engine
        self.start_issue = start_issue
        self.housekeeping = housekeeping
        self.on_started = on_started
        self.sweep = sweep
        self.leader = LeaderLock(engine)
        self._scheduler: AsyncIOScheduler | None = None
        self._task: asyncio.Task[None] | None = None

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

    def _try_lead(self) -> bool:
        try:
            return self.leader.try_acquire()
        except (SQLAlchemyError, OSError) as exc:  # the database is away: try again later
            log.warning("cannot take the scheduler lock: %s", exc)
            return False

    async def run(self) -> None:
        """Try to lead every few seconds; once leading, run the jobs until cancelled."""
        global _running
        # A short query (or flock), run on the loop itself: a thread still holding a freshly
        # taken lock when this task is cancelled would leak it.
        while not self._try_lead():
            await asyncio.sleep(5)
        log.info("this process leads the scheduler")
        scheduler = AsyncIOScheduler(
            jobstores={"default": SharedEngineJobStore(engine=self.engine)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        scheduler.add_job(
            "mailer.scheduler:start_due_issues",
            "interval",
            seconds=self.sweep.total_seconds(),
            id="start-due-issues",
            replace_existing=True,
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
        self._scheduler = scheduler
        scheduler.start()
        try:
            await asyncio.Event().wait()
        finally:
            scheduler.shutdown(wait=False)
            _running = None
            self.leader.release()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.leader.release()
