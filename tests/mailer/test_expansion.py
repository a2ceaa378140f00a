"""An issue's audience is queued in chunks: sending starts on the first, the issue is not
sent before the last, an expansion cut short is finished by the scheduler, and the
hand-off to a processor is recorded once with the whole count. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer import issues, sending
from mailer.errors import InvalidTransition
from mailer.models import DeliveryStatus, Issue, IssueStatus
from mailer.scheduler import Scheduler
from mailer.transport import SMTPRelay, SMTPTransport
from subscriptions.db import for_writing
from subscriptions.models import Subscription, SubscriptionStatus, TransferRecord
from subscriptions.runtime import Runtime
from tests.mailer.test_api import marketer  # noqa: F401  (a fixture)
from tests.mailer.test_processors import with_route
from tests.mailer.test_sending import deliveries, drain, seed, worker_for
from tests.support.smtp import SMTPSink


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "FIRST_CHUNK", 4)
    monkeypatch.setattr(sending, "CHUNK", 7)


def issue_of(engine: Engine, issue_id: int) -> Issue:
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        return issue


def queued_ids(engine: Engine, issue_id: int) -> list[int | None]:
    return [d.subscriber_id for d in deliveries(engine, issue_id)]


def test_sending_starts_on_the_first_chunk_and_ends_after_the_last(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 20)
    first = sending.start_issue(
        engine, runtime.audience, runtime.preparer, issue_id, complete=False
    )
    assert first == 4
    issue = issue_of(engine, issue_id)
    assert issue.status is IssueStatus.sending
    assert issue.expansion_cursor == people[3].id
    assert queued_ids(engine, issue_id) == [p.id for p in people[:4]]

    # The worker sends what is queued, but the issue stays sending: 16 are still to come.
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    assert len(smtp_server.received) == 4
    assert issue_of(engine, issue_id).status is IssueStatus.sending

    assert sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id) == 16
    assert issue_of(engine, issue_id).expansion_cursor is None
    assert queued_ids(engine, issue_id) == [p.id for p in people]
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(p.email for p in people)
    assert issue_of(engine, issue_id).status is IssueStatus.sent


def test_the_last_chunk_finishes_an_issue_whose_queue_already_ran_dry(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 6)
    sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id, complete=False)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    # The two left have withdrawn meanwhile: the last chunk queues nobody, and nothing else
    # would ever ask whether the issue is done.
    with Session(for_writing(engine)) as session:
        for person in people[4:]:
            row = session.exec(
                select(Subscription).where(Subscription.subscriber_id == person.id)
            ).one()
            row.status = SubscriptionStatus.unsubscribed
            session.add(row)
        session.commit()
    assert sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id) == 0
    assert issue_of(engine, issue_id).status is IssueStatus.sent


def test_an_issue_with_nobody_to_send_to_is_sent_at_once(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, _people = seed(app, engine, 0)
    assert runtime.start_issue(issue_id) == 0
    issue = issue_of(engine, issue_id)
    assert (issue.status, issue.expansion_cursor) == (IssueStatus.sent, None)


def test_the_scheduler_finishes_an_expansion_cut_short(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 12)
    sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id, complete=False)
    with Session(for_writing(engine)) as session:  # paused meanwhile: still queued in full
        issues.pause(session, session.get_one(Issue, issue_id), "checking a link")
        session.commit()
    scheduler = Scheduler(engine, runtime.start_issue)
    assert scheduler.start_due() == 1
    assert queued_ids(engine, issue_id) == [p.id for p in people]
    issue = issue_of(engine, issue_id)
    assert (issue.status, issue.expansion_cursor) == (IssueStatus.paused, None)
    assert scheduler.start_due() == 0  # nothing left to do


def test_a_cancelled_issue_queues_nobody_more(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, _people = seed(app, engine, 12)
    sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id, complete=False)
    with Session(for_writing(engine)) as session:
        issues.cancel(session, session.get_one(Issue, issue_id))
        session.commit()
    with pytest.raises(InvalidTransition):
        sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    assert Scheduler(engine, runtime.start_issue).start_due() == 0
    statuses = [d.status for d in deliveries(engine, issue_id)]
    assert statuses == [DeliveryStatus.skipped] * 4


def test_a_processor_hand_off_is_recorded_once_with_the_whole_count(
    routed_app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    runtime: Runtime = routed_app.state.runtime
    issue_id, people = seed(routed_app, engine, 15)
    with_route(engine, issue_id, "sakura-delivery", "<p>Dear {{ subscriber.name }}</p>")
    sending.start_issue(engine, runtime.audience, runtime.preparer, issue_id, complete=False)
    with Session(engine) as session:
        assert session.exec(select(TransferRecord)).all() == []  # not handed over in full yet
    assert runtime.start_issue(issue_id) == 11
    with Session(engine) as session:
        [record] = session.exec(select(TransferRecord)).all()
    assert (record.party, record.people, record.fields) == ("sakura-delivery", 15, "email,name")
    assert {d.processor for d in deliveries(engine, issue_id)} == {"sakura-delivery"}
    worker = worker_for(routed_app, engine, smtp_server)
    worker.routes = {
        "sakura-delivery": SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port))
    }
    asyncio.run(drain(worker))
    assert len(smtp_server.received) == len(people)


def test_send_now_answers_after_the_first_chunk_and_queues_the_rest_after(
    client: TestClient,
    app: FastAPI,
    engine: Engine,
    marketer: dict[str, str],  # noqa: F811
) -> None:
    issue_id, people = seed(app, engine, 10)
    answer = client.post(f"/api/v1/issues/{issue_id}/send-now", headers=marketer)
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["queuing"]) == ("sending", True)
    # The rest is queued by the answer's background task, or by the app's scheduler if it
    # happened to get there first.
    deadline = time.monotonic() + 10
    while (status := progress(client, marketer, issue_id))["queuing"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["total"] == 10
    assert queued_ids(engine, issue_id) == [p.id for p in people]  # in subscriber order


def progress(client: TestClient, headers: dict[str, str], issue_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/v1/issues/{issue_id}/status", headers=headers)
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body
