"""SMTP chaos: one issue to many recipients through a server that fails at random (421 on
connect, 451/452/550 on RCPT, 451 after DATA, drops mid-DATA and after DATA, stalls), with
the real worker retrying on a compressed clock (first retry after 50 ms instead of a minute).

Bars: no recipient lost (each got the message or a recorded 5xx); duplicates no more than
the "dropped after DATA" and stall events; every 5xx recorded as failed with its reply; no
protocol-state error; the issue never says "sent" while deliveries are outstanding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.retry import RetryPolicy
from mailer.transport import SMTPRelay, SMTPTransport, TLSMode
from mailer.worker import DeliveryWorker, WorkerConfig
from subscriptions.db import for_writing
from subscriptions.models import Subscriber
from subscriptions.runtime import Runtime
from tests.reliability.conftest import record, size
from tests.support.bulk import confirmed_readers
from tests.support.chaos import DUPLICATING, ChaosSink

RECIPIENTS = size(10_000, 100_000)
OUTSTANDING = (DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.deferred)


@pytest.fixture
def chaos() -> Iterator[ChaosSink]:
    sink = ChaosSink()
    sink.start()
    yield sink
    sink.stop()


def outstanding(engine: Engine, issue_id: int) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.issue_id == issue_id, col(Delivery.status).in_(OUTSTANDING))
            ).one()
        )


async def send_through_chaos(
    runtime: Runtime, engine: Engine, chaos: ChaosSink, issue_id: int
) -> list[str]:
    """Run the worker until nothing is outstanding; returns any moment the issue said
    "sent" while deliveries were outstanding."""
    relay = SMTPRelay(host=chaos.host, port=chaos.port, tls=TLSMode.none, timeout=1.0, pool_size=8)
    worker = DeliveryWorker(
        engine,
        runtime.audience,
        runtime.preparer,
        SMTPTransport(relay),
        runtime.delivery_tokens,
        WorkerConfig(
            batch=500,
            retry=RetryPolicy(first=timedelta(milliseconds=50)),
            lease=timedelta(seconds=30),
        ),
    )
    early: list[str] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            handled = await worker.run_once()
            with Session(engine) as session:
                issue = session.get(Issue, issue_id)
                assert issue is not None
                status = issue.status
            left = outstanding(engine, issue_id)
            if status is IssueStatus.sent and left:
                early.append(f"sent with {left} outstanding")
            if not left:
                break
            if not handled:
                await asyncio.sleep(0.05)
    finally:
        await worker.close()
    return early


def test_no_recipient_is_lost_to_a_misbehaving_server(
    app: FastAPI, engine: Engine, chaos: ChaosSink
) -> None:
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    magazine_id = confirmed_readers(engine, runtime.optin.hasher, "weekly", RECIPIENTS)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        issue = Issue(
            magazine_id=magazine_id,
            subject="Chaos weekly",
            html_body="<p>Hello {{ subscriber.name }}</p>",
        )
        session.add(issue)
        session.commit()
    assert issue.id is not None
    started = time.monotonic()
    runtime.start_issue(issue.id)
    early = asyncio.run(send_through_chaos(runtime, engine, chaos, issue.id))
    elapsed = time.monotonic() - started

    with Session(engine) as session:
        rows = session.exec(
            select(Subscriber.email, Delivery.status, Delivery.last_code, Delivery.last_reply)
            .join(Subscriber, col(Subscriber.id) == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue.id)
        ).all()
        final = session.get(Issue, issue.id)
        assert final is not None
    lost = [
        email
        for email, state, _code, _reply in rows
        if chaos.received[email] == 0 and email not in chaos.refused
    ]
    duplicates = sum(n - 1 for n in chaos.received.values() if n > 1)
    duplicate_bound = sum(chaos.events[f] for f in DUPLICATING)
    failed = {
        email: (code, reply) for email, state, code, reply in rows if state is DeliveryStatus.failed
    }
    unrecorded = [
        email
        for email, reply in chaos.refused.items()
        if email not in failed
        or failed[email][0] != 550
        or reply[4:] not in (failed[email][1] or "")
    ]
    name = f"SMTP chaos [{engine.dialect.name}]"
    record(name, "recipients", len(rows), str(RECIPIENTS), len(rows) == RECIPIENTS)
    record(name, "faults injected", dict(sorted(chaos.events.items())).__repr__(), "-", True)
    record(name, "lost", len(lost), "0", not lost)
    record(
        name,
        "duplicates",
        duplicates,
        f"<= {duplicate_bound} (dropped after DATA, stalls)",
        duplicates <= duplicate_bound,
    )
    record(name, "5xx not recorded as failed with the reply", len(unrecorded), "0", not unrecorded)
    record(
        name, "protocol-state errors", len(chaos.protocol_errors), "0", not chaos.protocol_errors
    )
    record(name, '"sent" with deliveries outstanding', len(early), "0", not early)
    record(name, "seconds to finish", round(elapsed, 1), "-", True)
    assert len(rows) == RECIPIENTS
    assert lost == []
    assert duplicates <= duplicate_bound
    assert unrecorded == []
    assert chaos.protocol_errors == []
    assert early == []
    assert final.status is IssueStatus.sent
    assert sum(chaos.events.values()) > 0
