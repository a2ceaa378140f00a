"""The scheduler survives its job store, and says when its sweeps have stopped.

Before, APScheduler's write of a job's next run time (``UPDATE apscheduler_jobs``) failing
once (the database locked, away or full) raised out of its loop and stopped every sweep
until a restart, silently. The job store's failures here are made by the database
driver's own error, raised for that one statement while a flag is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from mailer.leader import LeaderLock
from mailer.scheduler import Scheduler


class _FailingJobStore:
    """Makes the job store's writes fail while ``failing`` is set."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failing = False
        self.refused = 0

    def __call__(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if self.failing and statement.lstrip().upper().startswith("UPDATE APSCHEDULER_JOBS"):
            self.refused += 1
            raise OperationalError(statement, None, Exception("database is locked"))


@pytest.fixture
def failing(engine: Engine) -> Iterator[_FailingJobStore]:
    fault = _FailingJobStore(engine)
    event.listen(engine, "before_cursor_execute", fault)
    yield fault
    event.remove(engine, "before_cursor_execute", fault)


def _until(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_scheduler_survives_a_failing_job_store_and_says_so_meanwhile(
    engine: Engine, failing: _FailingJobStore
) -> None:
    scheduler = Scheduler(
        engine,
        start_issue=lambda _issue: None,
        sweep=timedelta(milliseconds=200),
        stale_after=timedelta(seconds=1),
    )
    scheduler.start()
    try:
        _until(lambda: scheduler.sweeps >= 2)
        assert scheduler.health().leading
        assert scheduler.health().problem is None

        failing.failing = True
        _until(lambda: failing.refused >= 3)
        _until(lambda: scheduler.health().problem is not None)
        problem = scheduler.health().problem or ""
        assert "has not read its jobs" in problem
        assert "database is locked" in problem

        failing.failing = False
        before = scheduler.sweeps
        _until(lambda: scheduler.sweeps >= before + 3)  # sweeping again, without a restart
        _until(lambda: scheduler.health().problem is None)
    finally:
        scheduler.stop()
    assert not scheduler.health().leading


def _take_the_lock_away(engine: Engine, scheduler: Scheduler) -> LeaderLock:
    """What a database restart does to the leader, and another process then: the lock is
    gone from under it (PostgreSQL: its connection is ended by the server; SQLite: its lock
    file is replaced), and another holder takes it."""
    if engine.dialect.name == "postgresql":
        connection = scheduler.leader._connection
        assert connection is not None
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.commit()
        with engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            admin.commit()
    else:
        path = Path(f"{engine.url.database}.leader")
        path.unlink()
    thief = LeaderLock(engine)
    _until(thief.try_acquire, seconds=5)
    return thief


def test_a_leader_that_lost_its_lock_steps_down_and_sweeps_no_more(engine: Engine) -> None:
    scheduler = Scheduler(
        engine,
        start_issue=lambda _issue: None,
        sweep=timedelta(milliseconds=200),
        lead_retry=timedelta(milliseconds=500),
    )
    scheduler.start()
    try:
        _until(lambda: scheduler.sweeps >= 1)
        thief = _take_the_lock_away(engine, scheduler)
        _until(lambda: not scheduler.health().leading, seconds=5)
        swept = scheduler.sweeps
        time.sleep(1.5)  # several sweep intervals and tries to lead, while the thief holds it
        assert scheduler.sweeps == swept
        assert not scheduler.health().leading
        thief.release()
        _until(lambda: scheduler.sweeps > swept, seconds=10)  # it leads again, and sweeps
        assert scheduler.health().leading
    finally:
        scheduler.stop()
