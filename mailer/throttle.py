"""A messages-per-second limit for a route: a token bucket shared by the sending tasks."""

from __future__ import annotations

import asyncio
import time


class Throttle:
    def __init__(self, per_second: float | None, burst: int = 50) -> None:
        self.per_second = per_second
        self.capacity = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when one more message may leave (at once when there is no limit)."""
        if not self.per_second:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(
                    self.capacity, self._tokens + (now - self._stamp) * self.per_second
                )
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.per_second)
