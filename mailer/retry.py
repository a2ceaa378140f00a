"""The retry policy of deferred deliveries: how long to wait before the next attempt, and when
to give up.

One policy for every path that records a temporary failure: the delivery worker (a 4xx from
the relay, a lost connection) and the processors' pull API (a processor reporting
``deferred``). The pause doubles from ``first`` with each attempt, up to 60 times ``first``;
an attempt that would fall after the issue's start plus ``deadline`` is not made: the delivery
is ``failed`` with "gave up after N attempts", so every issue ends (``sent``) within its
deadline however its recipients' relays answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.clock import utcnow
from mailer.models import DeliveryStatus
from mailer.queue import Claim, Result

MAX_FACTOR = 60  # the longest pause is 60 times the first: an hour by default


def backoff(attempts: int, first: timedelta = timedelta(minutes=1)) -> timedelta:
    """1, 2, 4... minutes (``first`` doubling), at most an hour (60 ``first``) between tries."""
    factor: int = min(2 ** max(min(attempts, 16), 0), MAX_FACTOR)
    return first * factor


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: timedelta = timedelta(minutes=1)
    deadline: timedelta = timedelta(days=3)  # from the start (MAILMAG_RETRY_DAYS)

    def backoff(self, attempts: int) -> timedelta:
        return backoff(attempts, self.first)

    def deferral(
        self,
        claim: Claim,
        started: datetime | None,
        code: int | None,
        reply: str,
        *,
        now: datetime | None = None,
    ) -> Result:
        """The result to record for a temporary failure of ``claim`` (its ``attempts`` made
        before this one): ``deferred`` until the next try, or ``failed`` when that try would
        come after the deadline."""
        now = now or utcnow()
        retry_at = now + self.backoff(claim.attempts)
        if retry_at > (started or now) + self.deadline:
            reason = f"gave up after {claim.attempts + 1} attempts: {reply}"
            return Result(claim, DeliveryStatus.failed, code, reason)
        return Result(claim, DeliveryStatus.deferred, code, reply, retry_at)
