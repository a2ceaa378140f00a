"""The delivery worker under store faults, counted per recipient at an independent SMTP sink
(aiosmtpd), on both databases:

- a store that reads but cannot write (a full disk) mid-send: the worker stops sending at
  once (no more than it may hold unrecorded leaves after the first refused write, nothing
  at all once it noticed), keeps its outcomes until the store writes again, then finishes:
  no one lost, no one mailed twice, no one who was mailed recorded as ``skipped``;
- a write stall with a kill: sending waits while outcomes cannot be stored, so a worker
  killed during the stall leaves no more than ``flush_every + connections`` to send again;
- a batch slower than its lease with two workers: the heartbeat renews the lease, so the
  other worker never takes (and sends) rows the first is still sending.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.worker import WorkerConfig
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import ConsentChannel, Subscriber
from subscriptions.runtime import Runtime
from tests.mailer.test_crash import finish_with_a_new_worker, issue_status, worker
from tests.mailer.test_sending import HTML, worker_for
from tests.reliability.conftest import record, size
from tests.support.bulk import confirmed_readers
from tests.support.faults import WriteFault, write_stall
from tests.support.smtp import SMTPSink

CONNECTIONS = 4  # worker_for's relay pool


def started_issue(app: FastAPI, engine: Engine, count: int) -> tuple[int, set[str]]:
    """A started issue to ``count`` confirmed readers; their addresses."""
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    magazine_id = confirmed_readers(engine, runtime.optin.hasher, "weekly", count)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        issue = Issue(
            magazine_id=magazine_id, subject="News for {{ subscriber.name }}", html_body=HTML
        )
        session.add(issue)
        session.commit()
        addresses = set(session.exec(select(Subscriber.email)).all())
    assert issue.id is not None
    runtime.start_issue(issue.id)
    return issue.id, addresses


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def counted(smtp_server: SMTPSink) -> Counter[str]:
    with smtp_server.lock:
        return Counter(r.rcpt_tos[0] for r in smtp_server.received)


def statuses(engine: Engine, issue_id: int) -> dict[str, DeliveryStatus]:
    with Session(engine) as session:
        rows = session.exec(
            select(Subscriber.email, Delivery.status)
            .join(Delivery, col(Delivery.subscriber_id) == Subscriber.id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    return {email: DeliveryStatus(status) for email, status in rows}


def test_a_store_that_cannot_write_stops_sending_at_once(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, addresses = started_issue(app, engine, size(600, 6000))
    smtp_server.delay = 0.005
    config = {"batch": 100, "lease": timedelta(seconds=3), "store_retry": 0.2}
    delivery = worker_for(app, engine, smtp_server, connections=CONNECTIONS, **config)
    bound = WorkerConfig(connections=CONNECTIONS).unrecorded_bound
    runtime: Runtime = app.state.runtime
    fault = WriteFault(engine)
    figures: dict[str, int] = {}

    def received() -> int:
        return len(smtp_server.received)

    async def scenario() -> None:
        running = asyncio.create_task(delivery.run())
        await until(lambda: received() >= 150, 60, "the worker sent too little")
        fault.on = True  # the disk is full from here on
        at_fault = received()
        await asyncio.sleep(4)  # longer than the lease: a renewal fails too
        figures["after the fault"] = received() - at_fault
        await asyncio.sleep(1)
        figures["in its last second"] = received() - at_fault - figures["after the fault"]
        with smtp_server.lock:
            mailed_since = [r.rcpt_tos[0] for r in smtp_server.received[at_fault : at_fault + 5]]
        fault.on = False  # space again: the held outcomes are stored, sending goes on
        # Readers who got the mail during the fault unsubscribe before it was recorded.
        with Session(for_writing(engine)) as session:
            for person in session.exec(
                select(Subscriber).where(col(Subscriber.email).in_(mailed_since))
            ).all():
                runtime.self_service.unsubscribe(
                    session, person, "weekly", Evidence(ConsentChannel.one_click)
                )
            session.commit()
        await until(lambda: issue_status(engine, issue_id) is IssueStatus.sent, 120, "not finished")
        delivery.stop()
        await running

    with fault:
        asyncio.run(scenario())

    sink = counted(smtp_server)
    lost = addresses - set(sink)
    duplicates = sum(sink.values()) - len(sink)
    mailed_skipped = [
        a
        for a, s in statuses(engine, issue_id).items()
        if s is DeliveryStatus.skipped and a in sink
    ]
    name = f"store cannot write mid-send [{engine.dialect.name}]"
    after, last = figures["after the fault"], figures["in its last second"]
    record(name, "sent after the first refused write", after, f"<= {bound}", after <= bound)
    record(name, "sent in the fault's last second", last, "0", last == 0)
    record(name, "lost", len(lost), "0", not lost)
    record(name, "duplicates", duplicates, "0 (no worker died)", duplicates == 0)
    record(name, "mailed but recorded skipped", len(mailed_skipped), "0", not mailed_skipped)
    assert fault.refused > 0
    assert after <= bound
    assert last == 0
    assert lost == set()
    assert duplicates == 0
    assert mailed_skipped == []


def test_a_worker_killed_during_a_write_stall_resends_no_more_than_the_bound(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    issue_id, addresses = started_issue(app, engine, size(1000, 10_000))
    smtp_server.delay = 0.005
    bound = WorkerConfig().unrecorded_bound  # `mailmag worker`: 100 + its 16 connections
    first = worker(engine, smtp_server, tmp_path, batch=500)
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 150:  # well into the first batch of 500
        assert time.monotonic() < deadline, "the first worker sent too little"
        assert first.poll() is None
        time.sleep(0.01)
    with write_stall(engine):
        stalled = len(smtp_server.received)
        time.sleep(2.0)  # outcomes cannot be stored: sending must wait, not pile them up
        during = len(smtp_server.received) - stalled
        first.send_signal(signal.SIGKILL)
        first.wait()
    finish_with_a_new_worker(engine, smtp_server, tmp_path, issue_id, timeout=120)

    sink = counted(smtp_server)
    lost = addresses - set(sink)
    duplicates = sum(sink.values()) - len(sink)
    name = f"write stall, then kill -9 [{engine.dialect.name}]"
    record(name, "sent during the stall", during, f"<= {bound}", during <= bound)
    record(name, "lost", len(lost), "0", not lost)
    record(
        name, "duplicates", duplicates, f"<= {bound} (unrecorded + in flight)", duplicates <= bound
    )
    assert lost == set()
    assert during <= bound
    assert duplicates <= bound


def test_two_workers_never_both_send_a_batch_slower_than_its_lease(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, addresses = started_issue(app, engine, size(300, 1200))
    # 50 at once (the throttle's burst), then 20 a second: a batch of 100 takes 2.5 s, and
    # its lease is 2 s.
    config = {"batch": 100, "lease": timedelta(seconds=2), "per_second": 20.0}
    workers = [worker_for(app, engine, smtp_server, name=f"w{n}", **config) for n in range(2)]

    async def scenario() -> None:
        running = [asyncio.create_task(w.run()) for w in workers]
        await until(lambda: issue_status(engine, issue_id) is IssueStatus.sent, 180, "not finished")
        for w in workers:
            w.stop()
        await asyncio.gather(*running)

    asyncio.run(scenario())
    sink = counted(smtp_server)
    lost = addresses - set(sink)
    duplicates = sum(sink.values()) - len(sink)
    name = f"batch slower than its lease, two workers [{engine.dialect.name}]"
    record(name, "lost", len(lost), "0", not lost)
    record(name, "duplicates", duplicates, "0 (no worker died)", duplicates == 0)
    assert lost == set()
    assert duplicates == 0
