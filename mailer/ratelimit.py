"""Rate limits, applied before any other database write or mail (sign-ups and privacy
requests in the web app, transactions per client in ``mailmag inbound``).

Each limiter counts events per key (a client IP, a normalised address) over a window, and
answers ``check(key)``: None when the event may go ahead (it is counted), else the seconds
until it may. Two kinds:

- ``SlidingWindow`` keeps its counts in the process's memory: exact, free, and per process.
  The number of keys is capped (oldest forgotten first) so a flood of distinct keys cannot
  exhaust memory.
- ``SharedWindow`` keeps them in the database (``rate_limit_count``), so every process and
  host that shares the store shares the limit: N web processes no longer give N times it.
  One statement per check: an upsert that counts the event only if the window allows it.
  The window slides by weighting the previous fixed window's count by the part of it still
  inside the sliding one (the estimate Cloudflare and others use: exact at the boundaries,
  within a few per cent between). Keys are stored as keyed digests (an IP address and an
  e-mail address are personal data), and rows older than the previous window are purged
  as the limiter goes. On PostgreSQL the table is unlogged: a check waits for no disk
  write, and a database crash forgets the counts (the limits start afresh).

The composition root picks the kind (``subscriptions.runtime``): shared on PostgreSQL, and on
SQLite when more than one web process serves; in memory for the embedded single process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from sqlalchemy import BigInteger, Float, Integer, String, TextClause, bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeEngine
from sqlmodel import Field, SQLModel

from mailer.clock import utcnow
from mailer.transactions import for_writing


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    seconds: float


class RateLimiter(Protocol):
    def check(self, key: str) -> float | None:
        """Count one event for ``key``: None if allowed, else seconds until it would be."""
        ...


class SlidingWindow:
    def __init__(
        self, limit: Limit, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str) -> float | None:
        """Count one event for ``key``: None if allowed, else seconds until it would be."""
        now = self._clock()
        horizon = now - self.limit.seconds
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                hits = self._hits[key] = deque()
                if len(self._hits) > self.max_keys:
                    self._hits.popitem(last=False)
            else:
                self._hits.move_to_end(key)
            while hits and hits[0] <= horizon:
                hits.popleft()
            if len(hits) >= self.limit.count:
                return hits[0] + self.limit.seconds - now
            hits.append(now)
            return None


class RateLimitCount(SQLModel, table=True):
    """Events counted for one key of one limit in one fixed window (``bucket``)."""

    __tablename__ = "rate_limit_count"

    scope: str = Field(primary_key=True, max_length=32)
    subject_digest: str = Field(primary_key=True, max_length=64)
    bucket: int = Field(primary_key=True, sa_type=BigInteger)
    hits: int = Field(sa_type=Integer)


# Counts the event in the current window only if the estimate of the sliding window (the
# previous window's count, weighted by how much of it the sliding window still covers, plus
# this window's) stays within the limit; a row comes back only when it was counted. On a
# conflict the row is locked, so concurrent checks of one key take turns and never both
# take the last place. ``{n}`` numbers the parameters of one check among several.
_PREVIOUS = (
    "COALESCE((SELECT p.hits FROM rate_limit_count AS p WHERE p.scope = :scope{n}"
    " AND p.subject_digest = :subject{n} AND p.bucket = :previous{n}), 0)"
)
_COUNT = f"""
    INSERT INTO rate_limit_count (scope, subject_digest, bucket, hits)
    SELECT :scope{{n}}, :subject{{n}}, :bucket{{n}}, 1
    WHERE {{gate}} :weight{{n}} * {_PREVIOUS} + 1 <= :limit{{n}}
    ON CONFLICT (scope, subject_digest, bucket) DO UPDATE SET hits = rate_limit_count.hits + 1
    WHERE :weight{{n}} * {_PREVIOUS} + rate_limit_count.hits + 1 <= :limit{{n}}
    RETURNING hits
"""
_PURGE = text(
    "DELETE FROM rate_limit_count WHERE scope = :scope AND bucket < :previous"
).bindparams(bindparam("scope", type_=String()), bindparam("previous", type_=BigInteger()))


def _typed(statement: str, count: int) -> TextClause:
    types: dict[str, TypeEngine[Any]] = {
        "scope": String(),
        "subject": String(),
        "bucket": BigInteger(),
        "previous": BigInteger(),
        "weight": Float(),
        "limit": Integer(),
    }
    return text(statement).bindparams(
        *(bindparam(f"{name}{n}", type_=kind) for n in range(count) for name, kind in types.items())
    )


_ONE = _typed(_COUNT.format(n=0, gate=""), 1)


@cache
def _chained(count: int) -> TextClause:
    """PostgreSQL: ``count`` checks in one statement, each counted only if the ones before it
    were (data-modifying CTEs, each gated on the one before returning its row)."""
    # Only numbers are formatted into the statement; every value is a bound parameter.
    gates = [f"EXISTS (SELECT 1 FROM c{n - 1}) AND" if n else "" for n in range(count)]  # noqa: S608
    steps = [f"c{n} AS ({_COUNT.format(n=n, gate=gates[n])})" for n in range(count)]
    counted = ", ".join(f"(SELECT count(*) FROM c{n})" for n in range(count))  # noqa: S608
    return _typed(f"WITH {', '.join(steps)} SELECT {counted}", count)


class SharedWindow:
    """A sliding-window limit kept in the database, shared by every process that uses it."""

    PURGE_EVERY = 1000  # checks between purges of this scope's old windows, per process

    def __init__(
        self, engine: Engine, scope: str, limit: Limit, digest: Callable[[str], str]
    ) -> None:
        self.engine = for_writing(engine)
        self.scope = scope
        self.limit = limit
        self.digest = digest
        self._checks = 0

    def check(self, key: str) -> float | None:
        refused = check_in_turn([(self, key)])
        return None if refused is None else refused[1]

    def _values(self, key: str, now: float, n: int) -> dict[str, object]:
        bucket = int(now // self.limit.seconds)
        return {
            f"scope{n}": self.scope,
            f"subject{n}": self.digest(key),
            f"bucket{n}": bucket,
            f"previous{n}": bucket - 1,
            f"weight{n}": 1 - (now - bucket * self.limit.seconds) / self.limit.seconds,
            f"limit{n}": self.limit.count,
        }

    def _wait(self, now: float) -> float:
        """After a refusal: the earliest the estimate can fall far enough is in the next window."""
        window = self.limit.seconds
        return window - now % window + window / self.limit.count

    def _purge_now(self, conn: Connection, now: float) -> None:
        self._checks += 1
        if self._checks % self.PURGE_EVERY == 1:
            previous = int(now // self.limit.seconds) - 1
            conn.execute(_PURGE, {"scope": self.scope, "previous": previous})


def check_in_turn(checks: Sequence[tuple[RateLimiter, str]]) -> tuple[int, float] | None:
    """Count one event for each ``(limiter, key)`` in order, stopping at the first refusal:
    None if every one allowed it, else the refusing one's place and its wait. Shared windows
    of one PostgreSQL database are checked together in one statement, on a connection in
    autocommit (one round trip, no BEGIN or COMMIT); elsewhere one at a time."""
    if not checks:
        return None
    windows = [limiter for limiter, _ in checks if isinstance(limiter, SharedWindow)]
    if len(windows) < len(checks) or len({w.engine.url for w in windows}) > 1:
        for n, (limiter, key) in enumerate(checks):
            wait = limiter.check(key)
            if wait is not None:
                return n, wait
        return None
    now = utcnow().timestamp()
    keys = [key for _, key in checks]
    engine = windows[0].engine
    counted: list[int] = []
    if engine.dialect.name == "postgresql":
        values: dict[str, object] = {}
        for n, (window, key) in enumerate(zip(windows, keys, strict=True)):
            values |= window._values(key, now, n)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            counted = list(conn.execute(_chained(len(windows)), values).one())
            for window in windows:
                window._purge_now(conn, now)
    else:  # SQLite: one write transaction, a statement per check, up to the first refusal
        with engine.begin() as conn:
            for window, key in zip(windows, keys, strict=True):
                counted.append(
                    int(conn.execute(_ONE, window._values(key, now, 0)).first() is not None)
                )
                window._purge_now(conn, now)
                if not counted[-1]:
                    break
    for n, window in enumerate(windows):
        if n >= len(counted) or not counted[n]:
            return n, window._wait(now)
    return None
