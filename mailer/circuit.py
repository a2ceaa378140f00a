"""The relay circuit: a relay that cannot be reached is the relay's problem, not each
recipient's.

When a session cannot be opened (connection refused or reset, a timeout connecting, a TLS
handshake or certificate that fails, AUTH refused, a 421 or 5xx greeting, EHLO and HELO
refused, settings the relay cannot honour), the circuit *opens*: the transport answers every
envelope at once with ``Outcome.unavailable`` (nothing was attempted for that recipient, so
the worker gives its claim back without counting an attempt), ``ready`` is false so the
worker claims no more work for that relay, and a probe opens a session again after
``first_probe`` seconds, doubling to at most ``max_probe``. The first probe that succeeds
*closes* the circuit: sending resumes within ``max_probe`` seconds of the relay's return,
instead of after each recipient's backoff.

Replies inside a transaction (MAIL, RCPT, DATA) stay per recipient and never open it.

Each episode is logged twice at warning level, whatever its length: once when the circuit
opens (with the reason) and once when it closes (with how long the relay was away). Every
pooled transport has its own circuit, so a processor's route that is down holds only its own
mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_PROBE = 0.25
MAX_PROBE = 2.0


class RelayCircuit:
    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[None]],
        *,
        first_probe: float = FIRST_PROBE,
        max_probe: float = MAX_PROBE,
    ) -> None:
        self.name = name
        self.reason = ""
        self.episodes = 0  # how many times it opened (for tests and metrics)
        self._probe = probe
        self._first_probe = first_probe
        self._max_probe = max_probe
        self._opened_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True while the relay is taking sessions (mail may be handed to it)."""
        return self._task is None

    def trip(self, reason: str) -> None:
        """A session could not be opened: open the circuit (once per episode) and probe."""
        self.reason = reason
        if self._task is not None:
            return
        self.episodes += 1
        self._opened_at = time.monotonic()
        log.warning(
            "relay %s unavailable: %s; its mail waits, and the relay is probed",
            self.name,
            reason,
            extra={"relay": self.name},
        )
        self._task = asyncio.get_running_loop().create_task(
            self._probing(), name=f"probe {self.name}"
        )

    async def _probing(self) -> None:
        interval = self._first_probe
        while True:
            await asyncio.sleep(interval)
            try:
                await self._probe()
            except Exception as exc:  # any failure: still away
                self.reason = f"{type(exc).__name__}: {exc}"
                interval = min(interval * 2, self._max_probe)
                continue
            break
        self._task = None
        away = time.monotonic() - self._opened_at
        log.warning(
            "relay %s is back after %.1f s; sending resumes",
            self.name,
            away,
            extra={"relay": self.name, "seconds_away": round(away, 1)},
        )

    async def close(self) -> None:
        """Stop probing (the transport is being closed)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
