"""The delivery worker: claims batches, re-checks each recipient, sends, records.

For each batch: the withdrawal feed is read first, then the audience hands over the
recipients still eligible (the rest are ``skipped``); right before each SMTP transaction the
worker checks the issue is still sending (re-read at most every ``status_ttl`` seconds, so a
pause or cancel stops new transactions within about a second) and that the person has not
withdrawn since (the feed is re-read at most every ``feed_ttl`` seconds). Outcomes are
recorded every ``flush_every`` messages, so a killed worker leaves at most that many sent
but unrecorded messages to be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer import issues, queue
from mailer.audience import Audience, IssueAudience, Recipient
from mailer.clock import utcnow
from mailer.compose import PreparedIssue
from mailer.feedback import Feedback, FeedbackKind, FeedbackSink
from mailer.models import DeliveryStatus, Issue, IssueStatus
from mailer.queue import Claim, Result
from mailer.throttle import Throttle
from mailer.transactions import for_writing
from mailer.transport import Envelope, Outcome, Transport
from mailer.verp import DeliveryTokens

log = logging.getLogger(__name__)


class IssuePreparer(Protocol):
    """Builds the prepared message of an issue (the composition root implements it)."""

    def prepare(self, issue: Issue) -> tuple[PreparedIssue, IssueAudience]: ...


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch: int = 500  # claimed at a time: a claim, the feed and the recipients are read per batch
    lease: timedelta = timedelta(minutes=5)
    per_second: float | None = None
    retry_deadline: timedelta = timedelta(days=3)
    flush_every: int = 50
    window: int = 64  # deliveries under way at once (the relay pool bounds the connections)
    status_ttl: float = 1.0
    feed_ttl: float = 0.5
    idle_seconds: float = 1.0
    first_retry: timedelta = timedelta(minutes=1)  # doubles each attempt, to 60 times this
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


_BAD_MAILBOX = re.compile(r"\b5\.1\.\d{1,3}\b")


def is_bad_mailbox(code: int | None, reply: str) -> bool:
    """A permanent refusal of the address itself (RFC 3463 5.1.x), not of the content."""
    return code is not None and 500 <= code < 600 and bool(_BAD_MAILBOX.search(reply))


def backoff(attempts: int, first: timedelta = timedelta(minutes=1)) -> timedelta:
    """1, 2, 4... minutes (``first`` doubling), at most an hour (60 ``first``) between tries."""
    factor: int = min(2 ** max(attempts, 0), 60)
    return first * factor


@dataclass
class _IssueState:
    issue: Issue
    prepared: PreparedIssue
    audience: IssueAudience
    checked_at: float


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
        self._clock = clock
        self._issues: dict[int, _IssueState] = {}
        self._cursor: int | None = None
        self._withdrawn: set[tuple[int, int]] = set()
        self._feed_at = 0.0
        self._stopping = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0

    # --- checks ------------------------------------------------------------------------------

    def _issue(self, issue_id: int) -> _IssueState:
        state = self._issues.get(issue_id)
        now = self._clock()
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
        now = self._clock()
        if not force and now - self._feed_at < self.config.feed_ttl:
            return
        if self._cursor is None:
            self._cursor, _ = self.audience.withdrawn_since(-1)
        else:
            self._cursor, withdrawn = self.audience.withdrawn_since(self._cursor)
            self._withdrawn |= withdrawn
        self._feed_at = now

    # --- one batch -----------------------------------------------------------------------------

    async def _claim(self) -> list[Claim]:
        return await asyncio.to_thread(
            queue.claim,
            self.engine,
            worker=self.config.name,
            limit=self.config.batch,
            lease=self.config.lease,
            processors=tuple(self.routes),
        )

    async def run_once(self) -> int:
        """Claim and handle one batch; return how many deliveries it held."""
        return await self._handle(await self._claim())

    async def _handle(self, claims: list[Claim]) -> int:
        if not claims:
            return 0
        await asyncio.to_thread(self._read_feed, True)
        by_issue: dict[int, list[Claim]] = {}
        for claim in claims:
            by_issue.setdefault(claim.issue_id, []).append(claim)
        for issue_id, issue_claims in by_issue.items():
            await self._send_issue(issue_id, issue_claims)
            await asyncio.to_thread(self._finish, issue_id)
        return len(claims)

    async def _send_issue(self, issue_id: int, claims: list[Claim]) -> None:
        state = await asyncio.to_thread(self._issue, issue_id)
        ids = [c.subscriber_id for c in claims if c.subscriber_id is not None]
        recipients = {
            r.subscriber_id: r
            for r in await asyncio.to_thread(self.audience.recipients, state.audience, ids)
        }
        # Up to ``window`` deliveries are under way at once, a new one starting as each
        # ends, so the relay's connections never wait for the slowest of a group. Outcomes
        # are stored in the background as they come (one store at a time, at least
        # ``flush_every`` outcomes each): each only after its reply, and the batch is done
        # only when every store is.
        window = asyncio.Semaphore(self.config.window)

        async def bounded(claim: Claim, recipient: Recipient) -> Result | None:
            async with window:
                return await self._deliver(claim, recipient)

        results: list[Result] = []
        everything: list[Result] = []
        started: list[asyncio.Task[Result | None]] = []
        loop = asyncio.get_running_loop()  # asked once: on Python 3.11 each asking is a getpid()
        for claim in claims:
            recipient = recipients.get(claim.subscriber_id or -1)
            if recipient is None:
                results.append(Result(claim, DeliveryStatus.skipped, reply="no longer eligible"))
            else:
                started.append(loop.create_task(bounded(claim, recipient)))
        storing: asyncio.Future[int] | None = None
        for finished in asyncio.as_completed(started):
            result = await finished
            if result is not None:
                results.append(result)
            if len(results) >= self.config.flush_every and (storing is None or storing.done()):
                if storing is not None:
                    await storing  # done: raises if the store failed
                storing = asyncio.ensure_future(
                    asyncio.to_thread(queue.record, self.engine, results)
                )
                everything += results
                results = []
        if storing is not None:
            await storing
        await asyncio.to_thread(queue.record, self.engine, results)
        await asyncio.to_thread(self._report_bad_mailboxes, everything + results)

    def _report_bad_mailboxes(self, results: list[Result]) -> None:
        """A 5xx that says the mailbox does not exist (5.1.x) is a hard bounce: suppress."""
        if self.bounces is None:
            return
        for result in results:
            if result.status is DeliveryStatus.failed and is_bad_mailbox(result.code, result.reply):
                self.bounces.apply(
                    Feedback(FeedbackKind.hard_bounce, result.claim.delivery_id, result.reply)
                )

    def _stale(self, issue_id: int) -> bool:
        state = self._issues.get(issue_id)
        return state is None or self._clock() - state.checked_at > self.config.status_ttl

    async def _deliver(self, claim: Claim, recipient: Recipient) -> Result | None:
        await self.throttle.wait()
        # Cheap checks in the loop; the database only when the cached answer is too old.
        if self._stale(claim.issue_id):
            await asyncio.to_thread(self._issue, claim.issue_id)
        state = self._issues[claim.issue_id]
        if state.issue.status is IssueStatus.cancelled:
            return Result(claim, DeliveryStatus.skipped, reply="issue cancelled")
        if state.issue.status is not IssueStatus.sending:
            await asyncio.to_thread(queue.release, self.engine, [claim])
            return None
        if self._clock() - self._feed_at >= self.config.feed_ttl:
            await asyncio.to_thread(self._read_feed)
        if (recipient.subscriber_id, state.audience.magazine_id) in self._withdrawn:
            return Result(claim, DeliveryStatus.skipped, reply="unsubscribed before sending")
        processor = claim.processor
        transport = self.routes.get(processor) if processor else self.transport
        if transport is None:  # a processor without a transport: keep the mail, say why
            return self._deferred(claim, state.issue.started_at, None, f"no route {processor!r}")
        token = self.tokens.make(claim.delivery_id)
        message = state.prepared.message(recipient, token)
        sent = await transport.send(
            Envelope(
                state.prepared.return_path(token), recipient.address, message, transparent=True
            )
        )
        if sent.outcome is Outcome.sent:
            self.sent += 1
            return Result(claim, DeliveryStatus.sent, sent.code, sent.reply)
        if sent.outcome is Outcome.failed:
            return Result(claim, DeliveryStatus.failed, sent.code, sent.reply)
        return self._deferred(claim, state.issue.started_at, sent.code, sent.reply)

    def _deferred(
        self, claim: Claim, started: datetime | None, code: int | None, reply: str
    ) -> Result:
        retry_at = utcnow() + backoff(claim.attempts, self.config.first_retry)
        deadline = (started or utcnow()) + self.config.retry_deadline
        if retry_at > deadline:
            return Result(
                claim,
                DeliveryStatus.failed,
                code,
                f"gave up after {claim.attempts + 1} attempts: {reply}",
            )
        return Result(claim, DeliveryStatus.deferred, code, reply, retry_at)

    def _finish(self, issue_id: int) -> None:
        with Session(for_writing(self.engine)) as session:
            if issues.finish_if_done(session, issue_id):
                log.info("issue %s sent", issue_id, extra={"issue_id": issue_id})
            session.commit()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until ``stop``; idle turns wait for ``nudge`` or ``idle_seconds``. After a
        full batch the next is claimed while this one is sent; one claimed but not begun
        when asked to stop is given back."""
        self._loop = asyncio.get_running_loop()
        ahead: asyncio.Task[list[Claim]] | None = None
        while not self._stopping:
            try:
                claimed, ahead = ahead, None
                claims = await (claimed if claimed is not None else self._claim())
                if len(claims) == self.config.batch and not self._stopping:
                    ahead = asyncio.create_task(self._claim())
                handled = await self._handle(claims)
            except Exception:
                log.exception("delivery batch failed; its rows are retried after the lease")
                handled = 0
            if not handled and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.idle_seconds):
                        await self._wake.wait()
                self._wake.clear()
        if ahead is not None:
            try:
                unused = await ahead
            except Exception:
                log.exception("claiming the next batch failed; its rows wait for the lease")
            else:
                await asyncio.to_thread(queue.release, self.engine, unused)
        await self.close()

    async def close(self) -> None:
        for transport in (self.transport, *self.routes.values()):
            await transport.close()

    def nudge(self) -> None:
        """Look for work at once (an issue started); safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping = True
        self.nudge()
