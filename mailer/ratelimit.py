"""Sliding-window rate limits kept in memory, applied before any database write or mail
(sign-ups in the web app, transactions per client in ``mailmag inbound``).

Each limiter counts events per key (a client IP, a normalised address) over a window. The
number of keys is capped (oldest forgotten first) so a flood of distinct keys cannot exhaust
memory. Limits are per process: with several web processes behind a balancer, each enforces
its own share; the durable per-address limit on confirmation mails lives in the database.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    seconds: float


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
