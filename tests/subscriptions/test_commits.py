"""Group commit: jobs from many threads share transactions, each job's failure stays its
own, nothing is answered before its transaction is committed. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

from subscriptions.commits import GroupCommit
from subscriptions.db import make_engine

ADD = text(
    "INSERT INTO magazine (title, description, purpose, active, slug, created_at) "
    "VALUES ('{}', '{}', 'newsletter', true, :slug, CURRENT_TIMESTAMP)"
)


def slugs(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT slug FROM magazine")).scalars())


def outcome(
    commits: GroupCommit, job: Callable[[Connection], object], caught: type[BaseException]
) -> object:
    """The job's result through ``commits``, or the exception of type ``caught`` it met."""
    try:
        return commits.run(job)
    except caught as exc:
        return exc


def add(slug: str) -> Callable[[Connection], str]:
    def job(conn: Connection) -> str:
        conn.execute(ADD, {"slug": slug})
        return slug

    return job


def test_every_job_from_many_threads_is_committed_before_its_answer(engine: Engine) -> None:
    commits = GroupCommit(engine, max_batch=8)
    seen_by_caller: list[bool] = []
    lock = threading.Lock()

    def one(n: int) -> str:
        slug = commits.run(add(f"m{n}"))
        committed = slug in slugs(engine)  # read on another connection: it is durable
        with lock:
            seen_by_caller.append(committed)
        return slug

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(200)))
    assert answers == [f"m{n}" for n in range(200)]
    assert seen_by_caller == [True] * 200
    assert slugs(engine) == {f"m{n}" for n in range(200)}


def test_a_failing_job_is_undone_alone_and_only_its_caller_sees_the_error(
    engine: Engine,
) -> None:
    commits = GroupCommit(engine)
    commits.run(add("taken"))
    barrier = threading.Barrier(3)

    def half_then_fail(conn: Connection) -> None:
        conn.execute(ADD, {"slug": "half"})  # undone with the rest of this job
        conn.execute(ADD, {"slug": "taken"})

    def run(job: Callable[[Connection], object]) -> object:
        barrier.wait()
        return outcome(commits, job, IntegrityError)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, [add("before"), half_then_fail, add("after")]))
    assert results[0] == "before"
    assert results[2] == "after"
    assert isinstance(results[1], IntegrityError)
    assert slugs(engine) == {"taken", "before", "after"}


def test_a_commit_that_fails_fails_every_job_of_its_batch(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("a commit is made to fail with SQLite's deferred foreign keys")
    commits = GroupCommit(engine)
    working, queued = threading.Event(), threading.Event()

    def first(conn: Connection) -> str:
        """Holds the first batch until the next two jobs wait, so they make one batch."""
        working.set()
        assert queued.wait(10)
        return add("first")(conn)

    def dangling(conn: Connection) -> None:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT
        conn.execute(
            text(
                "INSERT INTO subscription (subscriber_id, magazine_id, status, created_at) "
                "VALUES (424242, 424242, 'pending', CURRENT_TIMESTAMP)"
            )
        )

    def run(job: Callable[[Connection], object]) -> object:
        return outcome(commits, job, IntegrityError)

    with ThreadPoolExecutor(max_workers=3) as pool:
        leader = pool.submit(run, first)
        assert working.wait(10)  # the first batch is taken and being written
        others = [pool.submit(run, add("lost")), pool.submit(run, dangling)]
        while len(commits._waiting) < 2:
            pass
        queued.set()
        assert leader.result() == "first"
        lost, failed = (f.result() for f in others)
    assert isinstance(lost, IntegrityError)
    assert isinstance(failed, IntegrityError)
    assert slugs(engine) == {"first"}
    assert commits.run(add("next")) == "next"


class Interrupt(BaseException):
    """What tears a thread down (like KeyboardInterrupt), not an error of the job."""


def test_a_batch_torn_down_fails_its_jobs_and_the_writer_goes_on(engine: Engine) -> None:
    commits = GroupCommit(engine)
    working, queued = threading.Event(), threading.Event()

    def torn(conn: Connection) -> None:
        working.set()
        assert queued.wait(10)
        add("never")(conn)
        raise Interrupt

    def run(job: Callable[[Connection], object]) -> object:
        return outcome(commits, job, Interrupt)

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(run, torn)
        assert working.wait(10)
        follower = pool.submit(run, add("after"))
        while not commits._waiting:
            pass
        queued.set()
        assert isinstance(first.result(timeout=10), Interrupt)
        assert follower.result(timeout=10) == "after"  # the writer took the next batch
    assert slugs(engine) == {"after"}
    assert commits.run(add("later")) == "later"


def add_all(calls: list[int]) -> Callable[[Connection, list[str]], list[str | Exception]]:
    """Adds its slugs in one go, or fails with the first taken one; a slug starting with
    'bad' is refused on its own, without writing."""

    def together(conn: Connection, items: list[str]) -> list[str | Exception]:
        calls.append(len(items))
        outcomes: list[str | Exception] = []
        for slug in items:
            if slug.startswith("bad"):
                outcomes.append(ValueError(slug))
            else:
                conn.execute(ADD, {"slug": slug})
                outcomes.append(slug)
        return outcomes

    return together


def gathered(
    commits: GroupCommit,
    together: Callable[[Connection, list[str]], list[str | Exception]],
    items: list[str],
) -> list[object]:
    """Every item through ``run_together`` from its own thread, queued behind one job that
    holds the turn until they all wait, so they make one batch; each outcome or error."""
    working, queued = threading.Event(), threading.Event()

    def hold(conn: Connection) -> str:
        working.set()
        assert queued.wait(10)
        return "held"

    def one(item: str) -> object:
        try:
            return commits.run_together(together, item)
        except (ValueError, IntegrityError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(items) + 1) as pool:
        leader = pool.submit(commits.run, hold)
        assert working.wait(10)
        futures = [pool.submit(one, item) for item in items]
        while len(commits._waiting) < len(items):
            pass
        queued.set()
        assert leader.result(timeout=10) == "held"
        return [f.result(timeout=10) for f in futures]


def test_jobs_of_one_kind_waiting_together_run_as_one_call(engine: Engine) -> None:
    commits = GroupCommit(engine)
    calls: list[int] = []
    outcomes = gathered(commits, add_all(calls), ["a", "bad-one", "b", "c"])
    assert calls == [4]  # one call for the four
    assert [o if isinstance(o, str) else type(o) for o in outcomes] == [
        "a",
        ValueError,  # refused alone: only its caller sees it
        "b",
        "c",
    ]
    assert slugs(engine) == {"a", "b", "c"}


def test_when_the_call_for_many_fails_each_runs_alone_and_only_the_culprit_fails(
    engine: Engine,
) -> None:
    commits = GroupCommit(engine)
    commits.run(add("taken"))
    calls: list[int] = []
    outcomes = gathered(commits, add_all(calls), ["x", "taken", "y"])
    assert calls == [3, 1, 1, 1]  # together, then each alone
    assert outcomes[0] == "x"
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[2] == "y"
    assert slugs(engine) == {"taken", "x", "y"}  # the failed call's writes were undone


def test_coroutines_await_their_commit_together_without_a_thread_each(engine: Engine) -> None:
    """``run_together_async``: a hundred coroutines on one event loop, none holding a thread;
    each answer comes after its item is durable, in a few calls, and a refused item fails
    only its own coroutine."""
    commits = GroupCommit(engine)
    calls: list[int] = []
    together = add_all(calls)

    async def one(slug: str) -> object:
        try:
            done = await commits.run_together_async(together, slug)
        except ValueError as exc:
            return exc
        assert slug in slugs(engine)  # read on another connection: it is durable
        return done

    async def all_of_them() -> list[object]:
        return await asyncio.gather(*(one(f"{'bad' if n == 7 else 'a'}{n}") for n in range(100)))

    threads_before = threading.active_count()
    outcomes = asyncio.run(all_of_them())
    assert threading.active_count() <= threads_before + 1  # the writer, and no more
    assert [o if isinstance(o, str) else type(o) for o in outcomes] == [
        ValueError if n == 7 else f"a{n}" for n in range(100)
    ]
    assert sum(calls) == 100
    assert len(calls) < 100  # they were gathered
    assert slugs(engine) == {f"a{n}" for n in range(100) if n != 7}


def test_a_coroutine_that_stops_waiting_still_has_its_job_committed(engine: Engine) -> None:
    commits = GroupCommit(engine)
    working, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> str:
        working.set()
        assert release.wait(10)
        return "held"

    async def give_up() -> None:
        waiting = asyncio.ensure_future(commits.run_together_async(add_all([]), "abandoned"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(commits.run, hold)
        assert working.wait(10)
        asyncio.run(give_up())
        assert held.result(timeout=10) == "held"
    assert commits.run(add("later")) == "later"  # the writer did not stall on it
    assert slugs(engine) == {"abandoned", "later"}


def test_a_writer_that_sat_idle_takes_a_checked_connection(engine: Engine) -> None:
    """The writer keeps its connection only while batches follow each other: after a pause
    a server that dropped it (a restart, an idle timeout) costs no caller an error."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server-side disconnect is made with pg_terminate_backend")
    commits = GroupCommit(engine)
    backend = commits.run(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar())
    with engine.connect() as other:
        assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    while True:  # the server ends it at once, but says so in its own time
        with engine.connect() as other:
            gone = not other.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}
            ).scalar()
        if gone:
            break
    assert commits.run(add("after")) == "after"
    assert slugs(engine) == {"after"}


def test_closing_gives_the_writers_connection_back_at_once(engine: Engine) -> None:
    """The writer keeps its connection while batches follow each other; an app that stops
    gets it back at once, so no connection outlives the engine in a lingering thread."""
    own = make_engine(engine.url.render_as_string(hide_password=False))  # a pool of its own
    commits = GroupCommit(own)
    try:
        pool = own.pool
        assert isinstance(pool, QueuePool)
        commits.run(lambda conn: conn.execute(text("SELECT 1")))
        assert pool.checkedout() == 1  # lingering with it, waiting for more work
        commits.close()
        assert pool.checkedout() == 0
        assert commits.run(lambda conn: conn.execute(text("SELECT 2")).scalar()) == 2  # anew
        commits.close()
    finally:
        own.dispose()
