"""The outbox sender: delivers queued system mails through the configured transport.

Rows are claimed in small batches under a lease, so several web processes never send the
same mail twice while all are alive; each row's state changes only after the relay's reply is
known (sent, or retried with backoff on a temporary failure, or failed on a permanent one).
A relay that takes no session (``Outcome.unavailable``: its circuit is open) is not the mail's
fault: the batch's rows are given back due at once, no attempt counted, nothing is claimed
while the relay is away, and the loop looks again every ``RELAY_WAIT`` seconds, so system
mail resumes within about a second of the relay's return (``mailer.circuit`` logs the
episode). ``OutboxSender.run`` loops in the web process, woken at once when a request queues
a mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Engine

from mailer.clock import utcnow
from mailer.columns import UTCDateTime
from mailer.redact import storable
from mailer.signing import DKIMSigner
from mailer.transport import Envelope, Outcome, Transport
from subscriptions.db import for_writing, table_of
from subscriptions.models import SystemMail, SystemMailStatus

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BATCH = 50
LEASE = timedelta(minutes=5)
RELAY_WAIT = 0.5  # seconds between looks while the relay's circuit is open


_MAILS = table_of(SystemMail)
_QUEUED = (_MAILS.c.id == bindparam("mail"), _MAILS.c.status == SystemMailStatus.queued)
_SENT = (
    update(_MAILS)
    .where(*_QUEUED)
    .values(
        status=SystemMailStatus.sent,
        sent_at=bindparam("now"),
        attempts=_MAILS.c.attempts + 1,
        last_error=None,
    )
)
_ATTEMPTS = select(_MAILS.c.attempts).where(*_QUEUED)
_FAILED = (
    update(_MAILS)
    .where(*_QUEUED)
    .values(
        status=SystemMailStatus.failed,
        attempts=_MAILS.c.attempts + 1,
        last_error=bindparam("reply"),
    )
)
_DEFERRED = (
    update(_MAILS)
    .where(*_QUEUED)
    .values(
        next_attempt_at=bindparam("next"),
        attempts=_MAILS.c.attempts + 1,
        last_error=bindparam("reply"),
    )
)


_RELEASED = update(_MAILS).where(*_QUEUED).values(next_attempt_at=bindparam("now"))


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    recipient: str
    message: bytes


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))


class OutboxSender:
    """``signer``: DKIM-signs each mail as it leaves (in a worker thread), so the stored copy
    stays as rendered and the signature's time is the sending's."""

    def __init__(
        self,
        engine: Engine,
        transport: Transport,
        return_path: str,
        *,
        signer: DKIMSigner | None = None,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.return_path = return_path
        self.signer = signer
        self.wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def nudge(self) -> None:
        """Wake the loop at once; safe to call from any thread (sync endpoints run in a pool)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake.set)

    def _due(self) -> list[Claimed]:
        """Claim the mails due now by pushing their next attempt one lease ahead, so another
        web process skips them (on PostgreSQL with SKIP LOCKED); a mail whose sender died is
        due again when the lease runs out."""
        now = utcnow()
        due = (
            "SELECT id FROM system_mail WHERE status = 'queued' AND next_attempt_at <= :now "
            "ORDER BY id LIMIT :limit"
        )
        if self.engine.dialect.name == "postgresql":
            due += " FOR UPDATE SKIP LOCKED"
        statement = text(
            f"UPDATE system_mail SET next_attempt_at = :until WHERE id IN ({due}) "  # noqa: S608
            "RETURNING id, recipient, message"
        ).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("until", type_=UTCDateTime()))
        with for_writing(self.engine).begin() as conn:
            rows = conn.execute(statement, {"now": now, "until": now + LEASE, "limit": BATCH}).all()
        return sorted(
            (Claimed(r.id, r.recipient, bytes(r.message)) for r in rows), key=lambda c: c.id
        )

    def _record(self, mail_id: int, outcome: Outcome, reply: str) -> None:
        """The relay's answer, in one statement on a row still queued (a row another process
        already recorded is left alone): sent; failed on a permanent refusal or the last
        attempt; otherwise due again after a backoff that grows with its attempts. The reply is
        stored without the addresses and tokens it may quote (``redact.storable``)."""
        now = utcnow()
        with for_writing(self.engine).begin() as conn:
            if outcome is Outcome.sent:
                conn.execute(_SENT, {"mail": mail_id, "now": now})
                return
            attempts = conn.execute(_ATTEMPTS, {"mail": mail_id}).scalar_one_or_none()
            if attempts is None:
                return
            attempts += 1
            failed = outcome is Outcome.failed or attempts >= MAX_ATTEMPTS
            conn.execute(
                _FAILED if failed else _DEFERRED,
                {"mail": mail_id, "next": now + _backoff(attempts), "reply": storable(reply)},
            )

    def _release(self, mails: list[Claimed]) -> None:
        """Claimed mails due again at once, their attempts untouched (the relay is away)."""
        now = utcnow()
        with for_writing(self.engine).begin() as conn:
            conn.execute(_RELEASED, [{"mail": mail.id, "now": now} for mail in mails])

    async def deliver_due(self) -> int:
        """Send every mail that is due now; return how many were attempted (none while the
        relay is away)."""
        if not self.transport.ready:
            return 0
        mails = await asyncio.to_thread(self._due)
        for index, mail in enumerate(mails):
            message = mail.message
            if self.signer is not None:
                message = await asyncio.to_thread(self.signer.sign, message)
            result = await self.transport.send(Envelope(self.return_path, mail.recipient, message))
            if result.outcome is Outcome.unavailable:  # the circuit logged it, once
                await asyncio.to_thread(self._release, mails[index:])
                return index
            if result.outcome is not Outcome.sent:
                log.warning("system mail %s %s: %s", mail.id, result.outcome, result.reply)
            await asyncio.to_thread(self._record, mail.id, result.outcome, result.reply)
        return len(mails)

    async def run(self, idle_seconds: float = 5.0) -> None:
        """Deliver until ``stop``; a mail being sent when asked to stop is finished first."""
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if await self.deliver_due() == BATCH:
                    continue
            except Exception:  # keep the loop alive; the rows stay queued for the next turn
                log.exception("outbox delivery failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_seconds if self.transport.ready else RELAY_WAIT):
                    await self.wake.wait()
            self.wake.clear()

    def stop(self) -> None:
        # A flag, not Task.cancel(): Python 3.11's wait_for can swallow a cancellation that
        # races with the event being set, and the loop would never end.
        self._stopping = True
        self.nudge()
