"""The delivery worker: claims batches, re-checks each recipient, sends, records.

For each batch: the withdrawal feed is read first, then the audience hands over the
recipients still eligible (the rest are ``skipped``). Their messages are composed in a
worker thread, ``render_chunk`` at a time and at most a chunk ahead of the deliveries
waiting for them, so rendering never runs on the event loop (``mailer.messages``). Right
before each SMTP transaction the worker checks that the issue is still sending (re-read at
most every ``status_ttl`` seconds, so a pause or cancel stops new transactions within about
a second), that the person has not withdrawn since (the feed is re-read at most every
``feed_ttl`` seconds), and the fence: that the batch's claim still holds. A heartbeat renews
the lease of every claim the worker holds every third of the lease, so a batch may take
longer to send than its lease (a throttled rate, a slow relay) without another worker taking
its rows; a transaction begins only while the last renewal is younger than the lease less a
fifth (``LEASE_MARGIN``), so nothing leaves once another worker may have taken the row.

Outcomes are stored in the background, in one store at a time that starts once half of
``flush_every`` outcomes wait (or the oldest has waited a second). A transaction begins only
while fewer than ``flush_every + connections`` messages are sent but unrecorded or under way,
so a slow store makes sending wait, and a worker killed at any moment leaves at most that
many messages sent but unrecorded, to be sent again.

The worker fails closed. When storing outcomes or renewing the lease fails (a full disk, a
store that cannot write), or the lease ran out before it could be renewed, the batch stops
sending at once: no transaction begins any more (deliveries waiting for a connection, the
throttle or their message are given up), the transactions already under way (at most
``connections`` per transport, each past its DATA command: MAIL, RCPT and DATA are written
together) end and their outcomes are kept, and nothing more is claimed. The outcomes are
stored again, with growing pauses, until the store takes them, so nobody who was mailed is
mailed again or recorded as anything but sent; then the batch's unsent deliveries are given
back to the queue. A worker asked to stop (SIGTERM) stops its batch the same way: it waits
only for the transactions under way, not for a throttled rate, and leaves nothing ``sending``.

A message that cannot be composed fails that delivery alone, with a reason that holds no
personal data; a template refused while sending also pauses its issue, with the reason for
staff, and so does an issue that can no longer be prepared (a processor's contract ended).

A relay that takes no session (its circuit is open, ``mailer.circuit``) gets its claims back
untouched with the batch's unsent ones, no attempt counted, and no new work until its probe
succeeds; a processor's route has its own circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer import issues, queue
from mailer.audience import Audience, IssueAudience, Recipient
from mailer.compose import PreparedIssue
from mailer.errors import MailerError
from mailer.feedback import FeedbackSink, refusal
from mailer.messages import Composed, compose_each, pause_reason
from mailer.models import DeliveryStatus, Issue, IssueStatus
from mailer.queue import Claim, Result
from mailer.retry import RetryPolicy
from mailer.throttle import Throttle
from mailer.transactions import for_writing
from mailer.transport import Envelope, Outcome, Transport
from mailer.verp import DeliveryTokens

log = logging.getLogger(__name__)

LEASE_MARGIN = 0.2  # of the lease: no transaction begins this close to its end
STORE_DUE_SECONDS = 1.0  # an outcome waits at most this long for the next store
STORE_RETRY_MAX = 30.0  # seconds: the longest pause between tries after a failed store


class IssuePreparer(Protocol):
    """Builds the prepared message of an issue (the composition root implements it)."""

    def prepare(self, issue: Issue) -> tuple[PreparedIssue, IssueAudience]: ...


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch: int = 500  # claimed at a time: a claim, the feed and the recipients are read per batch
    lease: timedelta = timedelta(minutes=5)
    per_second: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # the pull API uses it too
    # Outcomes held unrecorded and transactions under way stay within flush_every +
    # connections (``unrecorded_bound``); a store starts once half of flush_every wait. At 50,
    # stores of about 31 rows cost about 20% more CPU per message on SQLite than at 100.
    flush_every: int = 100
    window: int = 64  # deliveries under way at once (checked, composed, waiting to be sent)
    connections: int = 16  # transactions at once per transport: as many as its pool holds
    render_chunk: int = 64  # messages composed per trip to a worker thread
    status_ttl: float = 1.0
    feed_ttl: float = 0.5
    idle_seconds: float = 1.0
    store_retry: float = 0.5  # seconds before storing again after a failure, doubling
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def unrecorded_bound(self) -> int:
        """Messages a worker killed at any moment may have sent without recording them."""
        return self.flush_every + self.connections


def report_refusals(sink: FeedbackSink, results: Iterable[Result]) -> None:
    """Each failed delivery, read as a bounce with its status would be (``mailer.bounces``):
    a bad address (5.1.x, 5.2.1) suppresses, a full mailbox or a system fault scores, a
    policy refusal (5.7.x) counts on the issue and suppresses no one."""
    for result in results:
        if result.status is DeliveryStatus.failed:
            feedback = refusal(result.claim.delivery_id, result.code, result.reply)
            if feedback is not None:
                sink.apply(feedback)


def describe(exc: BaseException) -> str:
    """An error in a line, for logs and reasons: a database error's own message, never the
    statement and parameters SQLAlchemy appends (they may hold SMTP replies)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:200]}" if text else type(cause).__name__


def _lost_to_another(count: int) -> None:
    if count > 0:  # a lease that ran out, claimed by another worker, which sends them again
        log.warning(
            "%d outcomes were not stored: their claims no longer held (taken by another "
            "worker after the lease ran out, or stored already)",
            count,
        )


class _Go(enum.Enum):
    """The answer "it may leave" of the checks before a transaction (beside an outcome)."""

    go = "go"


_GO = _Go.go


@dataclass
class _IssueState:
    issue: Issue
    prepared: PreparedIssue
    audience: IssueAudience
    checked_at: float


class _Batch:
    """One claimed batch while the worker holds it: the fence of its claims, the outcomes not
    yet stored, and whether it may still send."""

    def __init__(self, worker: DeliveryWorker, claims: list[Claim], valid_until: float) -> None:
        self.worker = worker
        self.config = worker.config
        self.claims = claims
        self.valid_until = valid_until  # on the worker's clock: no transaction begins after it
        self.lost: set[int] = set()  # claims another worker took after our lease ran out
        self.finished: set[int] = set()  # claims with an outcome, or given back
        self.halted: str | None = None
        self.pending: list[Result] = []
        self.storing: list[Result] = []
        self.reported: list[Result] = []  # stored, not yet looked at for bad mailboxes
        self.in_flight = 0
        self.entered = 0  # deliveries that began to be handled
        self.near_end: Callable[[], None] | None = None
        self.on_halt: list[Callable[[], None]] = []
        self._store_task: asyncio.Task[None] | None = None
        self._store_timer: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._halt_signal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slots: dict[int, asyncio.Semaphore] = {}

    # --- the fence and the bound -----------------------------------------------------------

    def may_send(self, claim: Claim) -> bool:
        return self.halted is None and claim.delivery_id not in self.lost

    async def admit(self, claim: Claim) -> bool:
        """Wait until one more message may be under way; False if it must not leave at all."""
        bound = self.config.unrecorded_bound
        while True:
            if not self.may_send(claim):
                return False
            if self.worker.clock() >= self.valid_until:
                self.halt("the lease ran out before the heartbeat could renew it")
                return False
            if len(self.pending) + len(self.storing) + self.in_flight < bound:
                break
            await self._changed()
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """An admitted transaction ended (its outcome, if any, follows with ``add``)."""
        self.in_flight -= 1
        self._wake()

    def begin(self) -> None:
        """One more delivery is being handled: claim the next batch when few are left."""
        self.entered += 1
        if (
            self.near_end is not None
            and self.halted is None
            and len(self.claims) - self.entered <= self.config.window
        ):
            near_end, self.near_end = self.near_end, None
            near_end()

    def halt(self, reason: str, *, fault: bool = True) -> None:
        """Begin no more transactions; ``fault`` false when the worker was asked to stop."""
        if self.halted is not None:
            return
        self.halted = reason
        log.log(
            logging.ERROR if fault else logging.INFO,
            "delivery batch stopped sending: %s; %d outcomes wait to be stored",
            reason,
            len(self.pending) + len(self.storing),
        )
        for hook in self.on_halt:
            hook()
        self._halt_signal.set_result(None)
        self._wake()

    async def unless_halted(self, waiting: Coroutine[object, object, None]) -> bool:
        """Await ``waiting`` (the throttle) unless the batch halts first; whether it may still
        send. A delivery must not wait out a throttled rate to learn that it is not to leave."""
        if self.halted is not None:
            waiting.close()
            return False
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait((task, self._halt_signal), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if not task.done():
            return False
        task.result()
        return self.halted is None

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- outcomes ----------------------------------------------------------------------------

    def add(self, result: Result) -> None:
        self.finished.add(result.claim.delivery_id)
        self.pending.append(result)
        if self._store_task is None and self.halted is None:
            if len(self.pending) >= max(1, self.config.flush_every // 2):
                self._start_store()
            elif self._store_timer is None:
                loop = asyncio.get_running_loop()
                self._store_timer = loop.call_later(STORE_DUE_SECONDS, self._store_due)

    def _store_due(self) -> None:
        self._store_timer = None
        if self.pending and self._store_task is None and self.halted is None:
            self._start_store()

    def _start_store(self) -> None:
        if self._store_timer is not None:
            self._store_timer.cancel()
            self._store_timer = None
        self._store_task = asyncio.get_running_loop().create_task(self._store())

    async def _store(self) -> None:
        """Store what waits, again while half of ``flush_every`` waits; a failure halts."""
        try:
            while self.pending and self.halted is None:
                chunk, self.pending = self.pending, []
                self.storing = chunk
                try:
                    stored = await asyncio.to_thread(queue.record, self.worker.engine, chunk)
                except Exception as exc:
                    self.storing, self.pending = [], chunk + self.pending
                    self.halt(f"storing outcomes failed ({describe(exc)})")
                    return
                _lost_to_another(len(chunk) - stored)
                self.storing = []
                self.reported += chunk
                self._wake()
                if len(self.pending) < max(1, self.config.flush_every // 2):
                    break
        finally:
            self._store_task = None
            if self.pending and self.halted is None and self._store_timer is None:
                loop = asyncio.get_running_loop()
                self._store_timer = loop.call_later(STORE_DUE_SECONDS, self._store_due)

    async def drain(self) -> bool:
        """Store every outcome held now; False (and halted) if the store failed."""
        if self._store_task is not None:
            await self._store_task
        if self.pending and self.halted is None:
            self._start_store()
            assert self._store_task is not None
            await self._store_task
        return not self.pending

    async def settle(self) -> None:
        """Store every outcome still held, after a failure again and again (with growing
        pauses) until the store takes them, or until the worker is asked to stop."""
        if self._store_timer is not None:
            self._store_timer.cancel()
            self._store_timer = None
        if self._store_task is not None:
            await self._store_task
        pause = self.config.store_retry
        while self.pending:
            held = list(self.pending)
            try:
                stored = await asyncio.to_thread(queue.record, self.worker.engine, held)
            except Exception as exc:
                if self.worker.stopping:
                    log.error(
                        "stopping with %d outcomes unrecorded (%s): those messages may be "
                        "sent again",
                        len(held),
                        describe(exc),
                    )
                    return
                log.warning(
                    "storing %d outcomes failed again (%s); next try in %.1f s",
                    len(held),
                    describe(exc),
                    pause,
                )
                await self.worker.pause_for(pause)
                pause = min(pause * 2, STORE_RETRY_MAX)
                continue
            self.pending = self.pending[len(held) :]
            self.reported += held
            _lost_to_another(len(held) - stored)
            if self.halted is not None:
                log.info("%d held outcomes stored after the failure", stored)

    def unsent(self) -> list[Claim]:
        """Claims still ours that have no outcome."""
        done = self.finished | self.lost
        return [c for c in self.claims if c.delivery_id not in done]

    def slot(self, transport: Transport) -> asyncio.Semaphore:
        """At most ``connections`` transactions per transport, so the last checks are made
        right before a transaction begins, not before a wait for a connection."""
        slot = self._slots.get(id(transport))
        if slot is None:
            slot = self._slots[id(transport)] = asyncio.Semaphore(self.config.connections)
        return slot


class _Composer:
    """Composes one issue's messages for a batch in a worker thread, ``render_chunk`` at a
    time, at most a chunk ahead of the deliveries waiting for them. A template refused for a
    recipient pauses the issue: later recipients get no message (``get`` answers None)."""

    def __init__(
        self,
        worker: DeliveryWorker,
        batch: _Batch,
        state: _IssueState,
        eligible: list[tuple[Claim, Recipient]],
    ) -> None:
        self.worker = worker
        self.batch = batch
        self.state = state
        self.eligible = eligible
        loop = asyncio.get_running_loop()
        self._ready: list[asyncio.Future[Composed | None]] = [
            loop.create_future() for _ in eligible
        ]
        self._wanted = -1
        self._demand = asyncio.Event()
        self._task = loop.create_task(self._run())
        batch.on_halt.append(self.stop)

    async def get(self, index: int) -> Composed | None:
        if index > self._wanted:
            self._wanted = index
            self._demand.set()
        return await self._ready[index]

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        chunk = max(1, self.worker.config.render_chunk)
        issue_id = self.state.issue.id or 0
        try:
            for start in range(0, len(self.eligible), chunk):
                while start > self._wanted + chunk:
                    self._demand.clear()
                    await self._demand.wait()
                if self.batch.halted is not None:
                    break
                if self.state.issue.status is not IssueStatus.sending:
                    break
                composed = await asyncio.to_thread(self._compose, start, start + chunk)
                for offset, one in enumerate(composed):
                    self._ready[start + offset].set_result(one)
                if composed and composed[-1].pauses_issue:
                    reason = pause_reason(composed[-1])
                    await asyncio.to_thread(self.worker.pause_issue, issue_id, reason)
                    self.state.issue.status = IssueStatus.paused
                    break
        except Exception as exc:
            log.exception("composing the messages of issue %s stopped", issue_id)
            self.batch.halt(f"composing messages failed ({describe(exc)})")
        finally:
            for waiting in self._ready:
                if not waiting.done():
                    waiting.set_result(None)

    def _compose(self, start: int, end: int) -> list[Composed]:
        make = self.worker.tokens.make
        return compose_each(
            self.state.prepared,
            ((recipient, make(claim.delivery_id)) for claim, recipient in self.eligible[start:end]),
        )


class DeliveryWorker:
    def __init__(
        self,
        engine: Engine,
        audience: Audience,
        preparer: IssuePreparer,
        transport: Transport,
        tokens: DeliveryTokens,
        config: WorkerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        bounces: FeedbackSink | None = None,
        routes: Mapping[str, Transport] | None = None,
    ) -> None:
        self.bounces = bounces
        self.routes = dict(routes or {})
        self.engine = engine
        self.audience = audience
        self.preparer = preparer
        self.transport = transport
        self.tokens = tokens
        self.config = config or WorkerConfig()
        self.throttle = Throttle(self.config.per_second)
        self.clock = clock
        self._issues: dict[int, _IssueState] = {}
        self._cursor: int | None = None
        self._withdrawn: set[tuple[int, int]] = set()
        self._feed_at = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: list[_Batch] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._unfinished: set[int] = set()  # issues whose "sent" check failed: asked again
        self.halted: str | None = None  # why the last batch stopped sending, if it did
        self.sent = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def pause_for(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    # --- checks ------------------------------------------------------------------------------

    def _issue(self, issue_id: int) -> _IssueState:
        state = self._issues.get(issue_id)
        now = self.clock()
        if state is None or now - state.checked_at > self.config.status_ttl:
            with Session(self.engine, expire_on_commit=False) as session:
                issue = session.get(Issue, issue_id)
                assert issue is not None
            if state is None:
                prepared, audience = self.preparer.prepare(issue)
                state = _IssueState(issue, prepared, audience, now)
                self._issues[issue_id] = state
            state.issue = issue
            state.checked_at = now
        return state

    def _read_feed(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._feed_at < self.config.feed_ttl:
            return
        if self._cursor is None:
            self._cursor, _ = self.audience.withdrawn_since(-1)
        else:
            self._cursor, withdrawn = self.audience.withdrawn_since(self._cursor)
            self._withdrawn |= withdrawn
        self._feed_at = now

    def pause_issue(self, issue_id: int, reason: str) -> None:
        """Pause a sending issue, with the reason staff will read beside it."""
        with Session(for_writing(self.engine)) as session:
            issue = session.exec(select(Issue).where(Issue.id == issue_id).with_for_update()).one()
            if issue.status is not IssueStatus.sending:
                return
            issues.pause(session, issue, reason)
            session.commit()
        log.warning("issue %s paused: %s", issue_id, reason, extra={"issue_id": issue_id})

    # --- the lease ---------------------------------------------------------------------------

    async def _claim(self) -> _Batch | None:
        # No work for a relay whose circuit is open (mailer.circuit): its rows wait, unclaimed,
        # for its probe to succeed or for another worker whose relay is up.
        own_relay = self.transport.ready
        routes = tuple(key for key, route in self.routes.items() if route.ready)
        if not own_relay and not routes:
            return None
        began = self.clock()
        claims = await asyncio.to_thread(
            queue.claim,
            self.engine,
            worker=self.config.name,
            limit=self.config.batch,
            lease=self.config.lease,
            processors=routes,
            own_relay=own_relay,
        )
        if not claims:
            return None
        batch = _Batch(self, claims, began + self._lease_seconds * (1 - LEASE_MARGIN))
        self._held.append(batch)
        if self._stopping:  # asked to stop while claiming: it goes back unsent
            batch.halt("the worker was asked to stop", fault=False)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases())
            self._heartbeat.add_done_callback(self._heartbeat_ended)
        return batch

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        """A heartbeat that died of something unforeseen says so, and what it held stops
        sending at once (its leases would run out unrenewed)."""
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("the lease heartbeat failed (%s); its batches stop sending", describe(exc))
        for batch in list(self._held):
            batch.halt(f"the lease heartbeat failed ({describe(exc)})")

    @property
    def _lease_seconds(self) -> float:
        return self.config.lease.total_seconds()

    def _let_go(self, batch: _Batch) -> None:
        with contextlib.suppress(ValueError):
            self._held.remove(batch)
        if not self._held and self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _renew_leases(self) -> None:
        """The heartbeat: renew every claim held, every third of the lease. A renewal that
        fails halts the batches it was for; a claim another worker took is dropped."""
        while self._held:
            await asyncio.sleep(self._lease_seconds / 3)
            batches = list(self._held)
            asked = [c for b in batches for c in b.unsent()]
            if not asked:
                continue
            began = self.clock()
            try:
                kept = await asyncio.to_thread(
                    queue.renew,
                    self.engine,
                    asked,
                    worker=self.config.name,
                    lease=self.config.lease,
                )
            except Exception as exc:
                for batch in batches:
                    batch.halt(f"renewing the lease failed ({describe(exc)})")
                continue
            asked_ids = {c.delivery_id for c in asked}
            for batch in batches:
                batch.valid_until = max(
                    batch.valid_until, began + self._lease_seconds * (1 - LEASE_MARGIN)
                )
                lost = {
                    c.delivery_id
                    for c in batch.claims
                    if c.delivery_id in asked_ids and c.delivery_id not in kept
                } - batch.finished
                if lost:
                    batch.lost |= lost
                    log.warning(
                        "%d claimed deliveries were taken by another worker after the lease "
                        "ran out; they are not sent here",
                        len(lost),
                    )

    async def _give_back(self, batch: _Batch) -> None:
        """Return the batch's unsent claims to the queue, to be claimed again at once."""
        unsent = batch.unsent()
        if not unsent:
            return
        try:
            await asyncio.to_thread(queue.release, self.engine, unsent)
        except Exception as exc:
            log.warning(
                "giving back %d unsent deliveries failed (%s); they are claimed again when "
                "the lease runs out",
                len(unsent),
                describe(exc),
            )
            return
        batch.finished.update(c.delivery_id for c in unsent)

    # --- one batch -----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim and handle one batch; return how many deliveries it held."""
        return await self._handle(await self._claim())

    async def _handle(
        self, batch: _Batch | None, near_end: Callable[[], None] | None = None
    ) -> int:
        if batch is None:
            return 0
        batch.near_end = near_end
        by_issue: dict[int, list[Claim]] = {}
        for claim in batch.claims:
            by_issue.setdefault(claim.issue_id, []).append(claim)
        checked: set[int] = set()  # issues asked "is it sent?" after their outcomes were stored
        try:
            await asyncio.to_thread(self._read_feed, True)
            for issue_id, issue_claims in by_issue.items():
                if batch.halted is not None:
                    break
                await self._send_issue(batch, issue_id, issue_claims)
                if await batch.drain():
                    await self._report(batch)
                    await self._finish_or_remember(issue_id)
                    checked.add(issue_id)
        except Exception as exc:
            log.exception("delivery batch failed")
            batch.halt(f"the batch failed ({describe(exc)})")
        await batch.settle()
        await self._report(batch)
        await self._give_back(batch)
        if not batch.pending:
            # Outcomes stored only after a halt may be an issue's last: nothing is left of it
            # for a worker to claim, so this is the one chance to mark it sent.
            for issue_id in sorted(by_issue.keys() - checked):
                await self._finish_or_remember(issue_id)
        self._let_go(batch)
        self.halted = batch.halted
        return len(batch.claims)

    async def _send_issue(self, batch: _Batch, issue_id: int, claims: list[Claim]) -> None:
        try:
            state = await asyncio.to_thread(self._issue, issue_id)
        except MailerError as exc:  # it can no longer be prepared: stop it, say why
            reason = f"paused while sending: {exc}"[:300]
            await asyncio.to_thread(self.pause_issue, issue_id, reason)
            return  # its claims are given back with the batch's unsent ones
        ids = [c.subscriber_id for c in claims if c.subscriber_id is not None]
        recipients = {
            r.subscriber_id: r
            for r in await asyncio.to_thread(self.audience.recipients, state.audience, ids)
        }
        eligible: list[tuple[Claim, Recipient]] = []
        for claim in claims:
            recipient = recipients.get(claim.subscriber_id or -1)
            if recipient is None:
                batch.begin()
                batch.add(Result(claim, DeliveryStatus.skipped, reply="no longer eligible"))
            else:
                eligible.append((claim, recipient))
        if not eligible:
            return
        # Up to ``window`` deliveries are under way at once, a new one starting as each
        # ends, so the relay's connections never wait for the slowest of a group.
        window = asyncio.Semaphore(self.config.window)
        composer = _Composer(self, batch, state, eligible)

        async def bounded(index: int, claim: Claim, recipient: Recipient) -> None:
            async with window:
                batch.begin()
                try:
                    result = await self._deliver(batch, composer, index, claim, recipient)
                except Exception as exc:
                    log.exception("a delivery of issue %s failed", issue_id)
                    batch.halt(f"a delivery failed ({describe(exc)})")
                    return
                if result is not None:
                    batch.add(result)

        loop = asyncio.get_running_loop()  # asked once: on Python 3.11 each asking is a getpid()
        started = [
            loop.create_task(bounded(index, claim, recipient))
            for index, (claim, recipient) in enumerate(eligible)
        ]
        try:
            await asyncio.gather(*started)
        finally:
            composer.stop()

    async def _report(self, batch: _Batch) -> None:
        reported, batch.reported = batch.reported, []
        if not reported or self.bounces is None:
            return
        try:
            await asyncio.to_thread(self._report_bad_mailboxes, reported)
        except Exception as exc:
            log.warning("reporting bad mailboxes failed (%s)", describe(exc))

    def _report_bad_mailboxes(self, results: list[Result]) -> None:
        if self.bounces is not None:
            report_refusals(self.bounces, results)

    def _stale(self, issue_id: int) -> bool:
        state = self._issues.get(issue_id)
        return state is None or self.clock() - state.checked_at > self.config.status_ttl

    async def _deliver(
        self,
        batch: _Batch,
        composer: _Composer,
        index: int,
        claim: Claim,
        recipient: Recipient,
    ) -> Result | None:
        """One delivery's outcome; None when it was not sent and is to be given back."""
        if self.throttle.per_second and not await batch.unless_halted(self.throttle.wait()):
            return None
        if not batch.may_send(claim):
            return None
        stopped = await self._stopped_before_sending(claim, recipient)
        if stopped is not _GO:
            return stopped
        state = self._issues[claim.issue_id]
        processor = claim.processor
        transport = self.routes.get(processor) if processor else self.transport
        if transport is None:  # a processor without a transport: keep the mail, say why
            return self._deferred(claim, state.issue.started_at, None, f"no route {processor!r}")
        composed = await composer.get(index)
        if composed is None:  # the issue stopped before this one was composed
            return None
        if composed.message is None:
            return Result(claim, DeliveryStatus.failed, reply=composed.reply)
        envelope = Envelope(
            state.prepared.return_path(composed.token),
            recipient.address,
            composed.message,
            transparent=True,
        )
        async with batch.slot(transport):
            # The wait for a connection may have been long: ask again, right before the
            # transaction, whether the issue still sends and the person still wants it.
            stopped = await self._stopped_before_sending(claim, recipient)
            if stopped is not _GO:
                return stopped
            if not await batch.admit(claim):
                return None
            try:
                sent = await transport.send(envelope)
            finally:
                batch.leave()
        if sent.outcome is Outcome.sent:
            self.sent += 1
            return Result(claim, DeliveryStatus.sent, sent.code, sent.reply)
        if sent.outcome is Outcome.failed:
            return Result(claim, DeliveryStatus.failed, sent.code, sent.reply)
        if sent.outcome is Outcome.unavailable:  # the relay's failure, not the recipient's:
            return None  # given back with the batch's unsent claims, no attempt counted
        return self._deferred(claim, state.issue.started_at, sent.code, sent.reply)

    async def _stopped_before_sending(
        self, claim: Claim, recipient: Recipient
    ) -> Result | _Go | None:
        """``_GO`` if the delivery may leave now; else its outcome (skipped: the issue was
        cancelled, or the person withdrew), or None when it goes back to the queue (the issue
        was paused). Cheap checks in the loop; the database only when the cached answer is
        older than ``status_ttl`` (the issue) or ``feed_ttl`` (withdrawals)."""
        if self._stale(claim.issue_id):
            await asyncio.to_thread(self._issue, claim.issue_id)
        state = self._issues[claim.issue_id]
        if state.issue.status is IssueStatus.cancelled:
            return Result(claim, DeliveryStatus.skipped, reply="issue cancelled")
        if state.issue.status is not IssueStatus.sending:
            return None
        if self.clock() - self._feed_at >= self.config.feed_ttl:
            await asyncio.to_thread(self._read_feed)
        if (recipient.subscriber_id, state.audience.magazine_id) in self._withdrawn:
            return Result(claim, DeliveryStatus.skipped, reply="unsubscribed before sending")
        return _GO

    def _deferred(
        self, claim: Claim, started: datetime | None, code: int | None, reply: str
    ) -> Result:
        return self.config.retry.deferral(claim, started, code, reply)

    def _finish(self, issue_id: int) -> None:
        with Session(for_writing(self.engine)) as session:
            if issues.finish_if_done(session, issue_id):
                log.info("issue %s sent", issue_id, extra={"issue_id": issue_id})
            session.commit()

    async def _finish_or_remember(self, issue_id: int) -> None:
        """Mark the issue sent if nothing is left; if the store fails, ask again later (the
        last batch's check is the only one: an issue must not stay "sending" for it)."""
        try:
            await asyncio.to_thread(self._finish, issue_id)
        except Exception as exc:
            log.warning("checking whether issue %s is sent failed (%s)", issue_id, describe(exc))
            self._unfinished.add(issue_id)
        else:
            self._unfinished.discard(issue_id)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until ``stop``; idle turns wait for ``nudge`` or ``idle_seconds``. Once few of
        a full batch's deliveries are left to begin, the next batch is claimed (its lease
        renewed by the heartbeat until it is sent); one claimed but not begun when asked to
        stop is given back."""
        self._loop = asyncio.get_running_loop()
        ahead: asyncio.Task[_Batch | None] | None = None

        def claim_next() -> None:
            nonlocal ahead
            if ahead is None and not self._stopping:
                ahead = asyncio.create_task(self._claim())

        pause = self.config.idle_seconds
        while not self._stopping:
            handled, self.halted = 0, None
            try:
                claimed, ahead = ahead, None
                batch = await (claimed if claimed is not None else self._claim())
                full = batch is not None and len(batch.claims) == self.config.batch
                handled = await self._handle(batch, claim_next if full else None)
            except Exception as exc:
                log.warning("claiming deliveries failed (%s); trying again", describe(exc))
            if self.halted is not None and not self._stopping:
                # Its deliveries went back to the queue at once: wait before taking them
                # again, longer each time, so a fault that stops every batch is no busy loop.
                await self.pause_for(pause)
                pause = min(pause * 2, STORE_RETRY_MAX)
                continue
            pause = self.config.idle_seconds
            if not handled and not self._stopping:
                for issue_id in sorted(self._unfinished):
                    await self._finish_or_remember(issue_id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.idle_seconds):
                        await self._wake.wait()
                self._wake.clear()
        if ahead is not None:
            try:
                unused = await ahead
            except Exception as exc:
                log.warning("claiming the next batch failed (%s); it waits for the lease", exc)
            else:
                if unused is not None:
                    await self._give_back(unused)
                    self._let_go(unused)
        await self.close()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for transport in (self.transport, *self.routes.values()):
            await transport.close()

    def nudge(self) -> None:
        """Look for work at once (an issue started); safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Stop soon: no transaction begins any more, those under way end and their outcomes
        are stored, the deliveries not sent go back to the queue; safe from any thread."""
        self._stopping = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_sending)
        self.nudge()

    def _stop_sending(self) -> None:
        self._stopped.set()
        for batch in self._held:
            batch.halt("the worker was asked to stop", fault=False)
