"""Poisoned sends, counted per recipient at an independent SMTP sink (aiosmtpd), on both
databases: one subscriber's name that no header may carry (``Bob\\r\\nBcc: x@example.net``,
written straight into the store, as a tampered or old row would be), through the delivery
worker and through the processor pull API; and a template the sandbox refuses only for some
recipients, at send time.

Bars: the poisoned delivery fails alone, with a reason that holds no personal data; everyone
else gets the message exactly once; nothing reaches the smuggled address; the issue finishes
(or, for the refused template, pauses once with its reason and finishes after a resume).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import timedelta
from enum import StrEnum

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer import issues
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.templating import MAX_OUTPUT
from subscriptions.db import for_writing
from subscriptions.models import Subscriber
from subscriptions.runtime import Runtime
from tests.mailer.test_crash import issue_status
from tests.mailer.test_sending import deliveries, drain, seed, transition, worker_for
from tests.reliability.conftest import record
from tests.subscriptions.test_processor_api import credential, pull, started_pull_issue
from tests.support.smtp import SMTPSink

POISON = "Bob\r\nBcc: x@example.net"
SMUGGLED = "x@example.net"


def poison(engine: Engine, person: Subscriber) -> None:
    """Write the name past every check, straight into the row."""
    with for_writing(engine).begin() as conn:
        conn.execute(
            text("UPDATE subscriber SET name = :name WHERE id = :id"),
            {"name": POISON, "id": person.id},
        )


def delivery_of(engine: Engine, issue_id: int, person: Subscriber) -> Delivery:
    found = [d for d in deliveries(engine, issue_id) if d.subscriber_id == person.id]
    assert len(found) == 1
    return found[0]


def record_status(name: str, what: str, found: StrEnum, bar: StrEnum) -> None:
    record(name, what, found.value, bar.value, found is bar)


def personal(reply: str | None, person: Subscriber) -> bool:
    """Whether a stored reply shows anything of the person."""
    return any(bit in (reply or "") for bit in ("Bob", SMUGGLED, person.email))


def test_a_poisoned_name_fails_alone_and_the_rest_of_its_batch_is_sent_once(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 60)
    victim = people[17]
    poison(engine, victim)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    # A short lease: a batch left unrecorded would be claimed and sent again within seconds.
    worker = worker_for(app, engine, smtp_server, batch=25, lease=timedelta(seconds=1))

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 15
        while issue_status(engine, issue_id) is not IssueStatus.sent:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # past the lease: nothing more may leave
        worker.stop()
        await running

    asyncio.run(scenario())
    with smtp_server.lock:
        sink = Counter(r.rcpt_tos[0] for r in smtp_server.received)
        injected = sum(r.message()["Bcc"] is not None for r in smtp_server.received)
    others = {p.email for p in people} - {victim.email}
    lost = others - set(sink)
    duplicates = sum(sink.values()) - len(sink)
    poisoned = delivery_of(engine, issue_id, victim)
    name = f"poisoned name, delivery worker [{engine.dialect.name}]"
    record(name, "lost", len(lost), "0", not lost)
    record(name, "duplicates", duplicates, "0", duplicates == 0)
    record(name, "mail to the smuggled address", sink[SMUGGLED] + injected, "0", not injected)
    record_status(name, "poisoned delivery", poisoned.status, DeliveryStatus.failed)
    finished = issue_status(engine, issue_id)
    record_status(name, "issue", finished, IssueStatus.sent)
    assert lost == set()
    assert duplicates == 0
    assert sink[victim.email] == 0
    assert sink[SMUGGLED] == 0
    assert injected == 0
    assert poisoned.status is DeliveryStatus.failed
    assert poisoned.last_reply is not None
    assert "could not be composed" in poisoned.last_reply
    assert not personal(poisoned.last_reply, victim)
    assert finished is IssueStatus.sent


def test_the_pull_api_hands_out_a_poisoned_batch_without_the_poisoned_one(
    routed_app: FastAPI, engine: Engine
) -> None:
    issue_id, people = started_pull_issue(routed_app, engine, 12)
    victim = people[5]
    poison(engine, victim)
    token = credential(engine, "sakura-asia")
    with TestClient(routed_app) as client:
        answer = pull(client, token)
        again = pull(client, token)
    assert answer.status_code == 200, answer.text
    handed = answer.json()["deliveries"] + again.json()["deliveries"]
    given = Counter(d["address"] for d in handed)
    others = {p.email for p in people} - {victim.email}
    poisoned = delivery_of(engine, issue_id, victim)
    name = f"poisoned name, pull API [{engine.dialect.name}]"
    record(name, "answer", answer.status_code, "200", answer.status_code == 200)
    record(name, "handed out once", len(given), str(len(others)), set(given) == others)
    record_status(name, "poisoned delivery", poisoned.status, DeliveryStatus.failed)
    assert set(given) == others
    assert set(given.values()) == {1}
    for item in handed:
        assert b"\r\nBcc:" not in base64.b64decode(item["message"])
    assert poisoned.status is DeliveryStatus.failed
    assert not personal(poisoned.last_reply, victim)


def test_a_template_refused_at_send_time_fails_its_delivery_and_pauses_the_issue(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 40)
    victim = people[30]
    # Passes the save check (its sample reader is not Reader 30); too large for Reader 30.
    copies = MAX_OUTPUT // 100_000 + 2
    html = (
        f"{{% if subscriber.name == '{victim.name}' %}}"
        f"{{% for c in 'x' * {copies} %}}{{{{ 'y' * 100000 }}}}{{% endfor %}}{{% endif %}}"
        "<p>Hello {{ subscriber.name }}</p>"
    )

    def rewrite(session: Session, issue: Issue) -> None:  # past the save check
        issue.html_body = html
        session.add(issue)

    transition(engine, issue_id, rewrite)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server, batch=25)))

    with Session(engine) as session:
        paused = session.get(Issue, issue_id)
        assert paused is not None
    refused = delivery_of(engine, issue_id, victim)
    left = Counter(d.status for d in deliveries(engine, issue_id))
    transition(engine, issue_id, issues.resume)  # staff read the reason and resume
    asyncio.run(drain(worker_for(app, engine, smtp_server, batch=25)))
    with smtp_server.lock:
        sink = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    others = {p.email for p in people} - {victim.email}
    lost = others - set(sink)
    duplicates = sum(sink.values()) - len(sink)
    finished = issue_status(engine, issue_id)
    name = f"template refused at send time [{engine.dialect.name}]"
    record_status(name, "issue after the refusal", paused.status, IssueStatus.paused)
    record_status(name, "refused delivery", refused.status, DeliveryStatus.failed)
    record(name, "lost", len(lost), "0", not lost)
    record(name, "duplicates", duplicates, "0", duplicates == 0)
    record_status(name, "issue after resuming", finished, IssueStatus.sent)
    assert paused.status is IssueStatus.paused
    assert paused.pause_reason is not None
    assert "template was refused" in paused.pause_reason
    assert "too large" in paused.pause_reason
    assert left[DeliveryStatus.sending] == 0  # what was not sent went back to the queue
    assert left[DeliveryStatus.failed] == 1
    assert refused.status is DeliveryStatus.failed
    assert refused.last_reply is not None
    assert "template was refused" in refused.last_reply
    assert not personal(refused.last_reply, victim)
    assert victim.name is not None
    assert victim.name not in refused.last_reply + paused.pause_reason
    assert sink[victim.email] == 0
    assert lost == set()
    assert duplicates == 0
    assert finished is IssueStatus.sent
