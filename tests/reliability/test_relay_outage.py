"""A relay that goes away and comes back: the real worker sends one issue through aiosmtpd,
which is stopped part-way and started again on the same port after ``OUTAGE`` seconds.

Before the relay circuit, every pending recipient met the outage as its own failure: each was
deferred with backoff, and mail resumed only when the backoff ran out, long after the relay
was back (90 s after a 90 s outage in the field). Now the outage is the relay's: claims go
back uncounted, the worker takes no work for that relay and probes it, and sending resumes
within the probe's cap of the relay's return.

Bars: mail resumes within ``RESUME_BAR`` seconds of the relay's return; nobody lost; no more
duplicates and no more counted failures than the transactions the stop cut (at most one per
pooled connection). The worker's first retry is ``FIRST_RETRY`` (longer than the bar, as a
minute is in production), so a backoff that still held mail would miss it. The few
recipients whose transaction the stop cut are deferred like any lost connection; once
everyone else is sent their backoff is fast-forwarded, so the run ends with all accounted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.retry import RetryPolicy
from mailer.transport import SMTPRelay, SMTPTransport
from mailer.worker import DeliveryWorker, WorkerConfig
from subscriptions.db import for_writing
from subscriptions.runtime import Runtime
from tests.reliability.conftest import record, size
from tests.support.bulk import confirmed_readers
from tests.support.smtp import SMTPSink

RECIPIENTS = size(2_000, 20_000)
OUTAGE = size(4, 90)  # seconds the relay is away
FIRST_RETRY = timedelta(seconds=size(15, 60))
RESUME_BAR = 5.0
POOL = 4


def counts(engine: Engine, issue_id: int) -> Counter[DeliveryStatus]:
    with Session(engine) as session:
        rows = session.exec(
            select(Delivery.status, func.count())
            .where(Delivery.issue_id == issue_id)
            .group_by(col(Delivery.status))
        ).all()
    return Counter({DeliveryStatus(status): int(n) for status, n in rows})


def fast_forward_retries(engine: Engine, issue_id: int) -> None:
    with for_writing(engine).begin() as conn:
        conn.execute(
            update(Delivery)
            .where(col(Delivery.issue_id) == issue_id)
            .where(col(Delivery.status) == DeliveryStatus.deferred)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def send_through_an_outage(
    runtime: Runtime, engine: Engine, sink: SMTPSink, issue_id: int
) -> dict[str, float]:
    transport = SMTPTransport(SMTPRelay(host=sink.host, port=sink.port, timeout=2, pool_size=POOL))
    worker = DeliveryWorker(
        engine,
        runtime.audience,
        runtime.preparer,
        transport,
        runtime.delivery_tokens,
        WorkerConfig(batch=200, per_second=600, retry=RetryPolicy(first=FIRST_RETRY)),
    )
    task = asyncio.create_task(worker.run())
    figures: dict[str, float] = {}
    try:
        assert await wait_until(lambda: len(sink.received) >= RECIPIENTS // 4, 60)
        sink.stop()
        await asyncio.sleep(OUTAGE)
        before = len(sink.received)
        sink.restart()
        back = time.monotonic()
        resumed = await wait_until(lambda: len(sink.received) > before, 120)
        figures["resumed after"] = time.monotonic() - back if resumed else float("inf")
        # Everyone not cut by the stop is sent; then the cut ones' backoff is skipped.
        await wait_until(
            lambda: (
                counts(engine, issue_id)[DeliveryStatus.sent]
                + counts(engine, issue_id)[DeliveryStatus.deferred]
                == RECIPIENTS
            ),
            120,
        )
        figures["deferred by the stop"] = counts(engine, issue_id)[DeliveryStatus.deferred]
        fast_forward_retries(engine, issue_id)
        worker.nudge()
        await wait_until(lambda: counts(engine, issue_id)[DeliveryStatus.sent] == RECIPIENTS, 60)
    finally:
        worker.stop()
        await task
    figures["episodes"] = transport.circuit.episodes
    return figures


def test_mail_resumes_within_seconds_of_the_relays_return(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    magazine_id = confirmed_readers(engine, runtime.optin.hasher, "weekly", RECIPIENTS)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        issue = Issue(magazine_id=magazine_id, subject="Outage weekly", html_body="<p>Hello</p>")
        session.add(issue)
        session.commit()
    assert issue.id is not None
    sink = SMTPSink(pipelining=True)
    sink.start()
    try:
        runtime.start_issue(issue.id)
        figures = asyncio.run(send_through_an_outage(runtime, engine, sink, issue.id))
    finally:
        sink.stop()

    received = Counter(r.rcpt_tos[0] for r in sink.received)
    with Session(engine) as session:
        final = session.get(Issue, issue.id)
        assert final is not None
        rows = session.exec(
            select(Delivery.status, Delivery.attempts).where(Delivery.issue_id == issue.id)
        ).all()
    lost = RECIPIENTS - len(received)
    duplicates = sum(n - 1 for n in received.values())
    counted = sum(1 for _status, attempts in rows if attempts > 1)  # a failure was counted
    resumed = figures["resumed after"]
    name = f"relay outage [{engine.dialect.name}]"
    record(name, "outage seconds", OUTAGE, "-", True)
    record(
        name,
        "mail resumed after the relay's return (s)",
        round(resumed, 2),
        f"<= {RESUME_BAR}",
        resumed <= RESUME_BAR,
    )
    record(name, "lost", lost, "0", lost == 0)
    record(
        name, "duplicates", duplicates, f"<= {POOL} (transactions the stop cut)", duplicates <= POOL
    )
    record(name, "recipients with a counted failure", counted, f"<= {POOL}", counted <= POOL)
    record(name, "circuit episodes", figures["episodes"], ">= 1", figures["episodes"] >= 1)
    assert resumed <= RESUME_BAR
    assert lost == 0
    assert duplicates <= POOL
    assert counted <= POOL
    assert figures["episodes"] >= 1
    assert final.status is IssueStatus.sent
