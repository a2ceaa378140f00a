"""Rate limits kept in the database: one count for every process that shares the store, a
window that slides, keys stored only as digests, old windows purged; on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.ratelimit import Limit, RateLimitCount, SharedWindow, SlidingWindow, check_in_turn
from tests.support.clock import moved_clock


def digest(value: str) -> str:
    return f"d-{len(value)}-{sum(map(ord, value))}"


def window(engine: Engine, count: int = 3, seconds: float = 3600) -> SharedWindow:
    return SharedWindow(engine, "sign-up/ip", Limit(count, seconds), digest)


def test_processes_sharing_the_store_share_the_limit(engine: Engine) -> None:
    first, second = window(engine), window(engine)  # as two web processes hold them
    answers = [limiter.check("203.0.113.9") for limiter in (first, second, first, second)]
    assert answers[:3] == [None, None, None]
    assert answers[3] is not None
    assert 0 < answers[3] <= 3600 + 1200  # the rest of this window, and a share of the next
    assert second.check("203.0.113.10") is None  # another key has its own count
    other = SharedWindow(engine, "contact/ip", Limit(3, 3600), digest)
    assert other.check("203.0.113.9") is None  # and another limit


def test_the_window_slides(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = moved_clock(monkeypatch)
    now = clock.now().timestamp()
    clock.move(timedelta(seconds=3600 - now % 3600 + 1))  # just after a window starts
    limiter = window(engine, count=4)
    assert [limiter.check("k") for _ in range(4)] == [None] * 4
    assert limiter.check("k") is not None
    clock.move(timedelta(minutes=60))  # the next window, the last one still almost all in it
    assert limiter.check("k") is not None
    clock.move(timedelta(minutes=30))  # half of it is behind: room for 4 - 4 / 2 = 2
    assert [limiter.check("k") for _ in range(2)] == [None, None]
    assert limiter.check("k") is not None
    clock.move(timedelta(hours=2))
    assert limiter.check("k") is None


def test_keys_are_stored_as_digests_and_old_windows_purged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = moved_clock(monkeypatch)
    limiter = window(engine, count=100, seconds=60)
    assert limiter.check("reader@example.org") is None
    with Session(engine) as session:
        [row] = session.exec(select(RateLimitCount)).all()
    assert row.subject_digest == digest("reader@example.org")
    clock.move(timedelta(minutes=5))
    fresh = window(engine, count=100, seconds=60)  # a process's first check purges its scope
    assert fresh.check("someone@example.org") is None
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RateLimitCount)).one() == 1


def test_in_memory_windows_count_alike() -> None:
    limiter = SlidingWindow(Limit(2, 60))
    assert [limiter.check("a"), limiter.check("a"), limiter.check("b")] == [None, None, None]
    assert limiter.check("a") is not None


def test_limits_checked_in_turn_count_the_later_ones_only_if_the_earlier_allowed(
    engine: Engine,
) -> None:
    """A sign-up's network limit, then its address's: a network over its limit uses up none
    of the victim address's sign-ups (one statement on PostgreSQL, in turn on SQLite)."""
    per_ip = SharedWindow(engine, "sign-up/ip", Limit(2, 3600), digest)
    per_address = SharedWindow(engine, "sign-up/address", Limit(3, 3600), digest)
    answers = [check_in_turn([(per_ip, "198.51.100.1"), (per_address, "victim")]) for _ in range(4)]
    assert answers[:2] == [None, None]
    assert [refused[0] for refused in answers[2:] if refused] == [0, 0]
    assert check_in_turn([(per_ip, "198.51.100.2"), (per_address, "victim")]) is None
    refused = check_in_turn([(per_ip, "198.51.100.3"), (per_address, "victim")])
    assert refused is not None
    assert refused[0] == 1  # the address's third sign-up was the last it may have
    assert check_in_turn([(per_ip, "198.51.100.3"), (per_address, "other")]) is None
