"""Sending an issue end to end through the real queue, worker and SMTP transport into a
real SMTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer import issues, queue
from mailer.audience import Recipient
from mailer.clock import utcnow
from mailer.compose import PreparedIssue
from mailer.errors import InvalidTransition
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.queue import Result
from mailer.sending import start_issue
from mailer.transport import SMTPRelay, SMTPTransport
from mailer.worker import DeliveryWorker, WorkerConfig
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentChannel,
    Magazine,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscriptions.runtime import STOP_GRACE_SECONDS, Runtime
from tests.support.smtp import SMTPSink

HTML = "<h1>Hello {{ subscriber.name }}</h1><p>This week's news.</p>"


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def seed(app: FastAPI, engine: Engine, count: int) -> tuple[int, list[Subscriber]]:
    """``count`` confirmed subscribers of the 'weekly' magazine and one draft issue."""
    runtime = runtime_of(app)
    runtime.sync_magazines()
    lifecycle = runtime.optin.lifecycle
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        people = []
        for n in range(count):
            email = f"reader{n}@example.org"
            person = Subscriber(
                email=email,
                name=f"Reader {n}",
                company=f"Secret Co {n}",
                address_digest=runtime.optin.hasher.digest(email),
            )
            session.add(person)
            session.flush()
            lifecycle.request(session, person, weekly, evidence)
            lifecycle.confirm(session, person, evidence)
            people.append(person)
        issue = Issue(
            magazine_id=weekly.id or 0, subject="News for {{ subscriber.name }}", html_body=HTML
        )
        session.add(issue)
        session.commit()
        assert issue.id is not None
        return issue.id, people


def worker_for(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, **config: object
) -> DeliveryWorker:
    runtime = runtime_of(app)
    transport = SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port, pool_size=4))
    return DeliveryWorker(
        engine,
        runtime.audience,
        runtime.preparer,
        transport,
        runtime.delivery_tokens,
        WorkerConfig(**({"batch": 25} | config)),  # type: ignore[arg-type]
    )


async def drain(worker: DeliveryWorker) -> None:
    while await worker.run_once():
        pass
    await worker.close()


def deliveries(engine: Engine, issue_id: int) -> list[Delivery]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Delivery).where(Delivery.issue_id == issue_id).order_by(col(Delivery.id))
            ).all()
        )


def status_of(engine: Engine, issue_id: int) -> IssueStatus:
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        return issue.status


def transition(engine: Engine, issue_id: int, move: Callable[[Session, Issue], None]) -> None:
    """Move the issue as staff would (``issues.pause``, ``issues.resume``...)."""
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        move(session, issue)
        session.commit()


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_every_subscriber_gets_exactly_one_compliant_message(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 60)
    runtime = runtime_of(app)
    assert start_issue(engine, runtime.audience, runtime.preparer, issue_id) == 60
    assert start_issue(engine, runtime.audience, runtime.preparer, issue_id) == 0  # idempotent
    worker = worker_for(app, engine, smtp_server)
    asyncio.run(drain(worker))

    received = smtp_server.received
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(p.email for p in people)
    assert all(len(r.rcpt_tos) == 1 for r in received)
    assert status_of(engine, issue_id) is IssueStatus.sent
    assert {d.status for d in deliveries(engine, issue_id)} == {DeliveryStatus.sent}
    for r in received:
        message = parse(r.data)
        assert message.defects == []
        assert message["To"] == r.rcpt_tos[0]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "/u/" in message["List-Unsubscribe"]
        assert r.mail_from.startswith("bounce+")
        token = r.mail_from.split("+", 1)[1].split("@", 1)[0]
        assert runtime.delivery_tokens.read(token) is not None
        raw = r.data.decode("utf-8", "replace")
        assert "Secret Co" not in raw  # a field the template does not use never leaves
        number = r.rcpt_tos[0].removeprefix("reader").split("@")[0]
        assert message["Subject"] == f"News for Reader {number}"


def test_smtp_refusals_end_per_recipient(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 6)
    smtp_server.refuse(people[1].email, "550 5.1.1 No such user")
    smtp_server.refuse(people[2].email, "451 4.7.1 Greylisted, try later")
    smtp_server.fail_data("452 4.3.1 Insufficient storage")  # the first DATA
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    by_person = {d.subscriber_id: d for d in deliveries(engine, issue_id)}
    assert by_person[people[1].id].status is DeliveryStatus.failed
    assert by_person[people[1].id].last_code == 550
    assert by_person[people[2].id].status is DeliveryStatus.deferred
    assert by_person[people[2].id].last_code == 451
    statuses = [d.status for d in by_person.values()]
    assert statuses.count(DeliveryStatus.sent) == 3
    assert statuses.count(DeliveryStatus.deferred) == 2  # greylisted, and the 452 on DATA
    assert status_of(engine, issue_id) is IssueStatus.sending  # never "sent" with mail unsent
    assert len(smtp_server.received) == 3


def test_a_worker_whose_lease_ran_out_cannot_record_over_the_new_owner(
    app: FastAPI, engine: Engine
) -> None:
    issue_id, _people = seed(app, engine, 3)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    late = queue.claim(engine, worker="late", limit=3, lease=timedelta(seconds=-1))
    owner = queue.claim(engine, worker="owner", limit=3, lease=timedelta(minutes=5))
    assert sorted(c.delivery_id for c in owner) == sorted(c.delivery_id for c in late)
    assert all(new.fence == old.fence + 1 for new, old in zip(owner, late, strict=True))
    retry_at = utcnow() + timedelta(minutes=7)
    assert queue.record(engine, [Result(c, DeliveryStatus.failed, 550, "late") for c in late]) == 0
    outcomes = [
        Result(owner[0], DeliveryStatus.sent, 250, "2.0.0 queued as A1"),
        Result(owner[1], DeliveryStatus.deferred, 451, "4.7.1 later", retry_at),
        Result(owner[2], DeliveryStatus.failed, 550, "5.1.1 no such user"),
    ]
    assert queue.record(engine, outcomes) == 3
    assert queue.record(engine, outcomes) == 0  # a row changes once per claim
    stored = {d.id: d for d in deliveries(engine, issue_id)}
    sent, deferred, failed = (stored[c.delivery_id] for c in owner)
    assert (sent.status, sent.last_code, sent.last_reply) == (
        DeliveryStatus.sent, 250, "2.0.0 queued as A1"
    )  # fmt: skip
    assert sent.sent_at is not None
    assert deferred.sent_at is None
    assert failed.sent_at is None
    assert deferred.status is DeliveryStatus.deferred
    assert abs((deferred.next_attempt_at - retry_at).total_seconds()) < 0.001
    assert failed.status is DeliveryStatus.failed
    assert failed.last_reply == "5.1.1 no such user"
    assert all(d.attempts == 1 and d.lease_owner is None for d in stored.values())


def test_deferred_deliveries_are_retried_and_the_issue_then_finishes(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, _people = seed(app, engine, 3)
    smtp_server.drop_data()
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    assert status_of(engine, issue_id) is IssueStatus.sending
    with Session(for_writing(engine)) as session:  # the retry falls due
        for delivery in session.exec(
            select(Delivery).where(Delivery.status == DeliveryStatus.deferred)
        ).all():
            delivery.next_attempt_at = delivery.next_attempt_at.replace(year=2000)
            session.add(delivery)
        session.commit()
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    assert status_of(engine, issue_id) is IssueStatus.sent
    assert len(smtp_server.received) == 3


def test_unsubscribed_and_suppressed_people_are_skipped(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 5)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    with Session(for_writing(engine)) as session:  # after queueing, before sending
        gone = session.get(Subscriber, people[0].id)
        assert gone is not None
        runtime.self_service.unsubscribe(session, gone, "", Evidence(ConsentChannel.one_click))
        session.add(
            Suppression(address_digest=people[1].address_digest, reason=SuppressionReason.complaint)
        )
        session.commit()
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    mailed = {r.rcpt_tos[0] for r in smtp_server.received}
    assert mailed == {p.email for p in people[2:]}
    skipped = [d for d in deliveries(engine, issue_id) if d.status is DeliveryStatus.skipped]
    assert len(skipped) == 2
    assert status_of(engine, issue_id) is IssueStatus.sent


def test_an_unsubscribe_during_a_batch_stops_that_message(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 4)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    worker = worker_for(app, engine, smtp_server, feed_ttl=0.0)
    original = worker.audience.recipients

    def recipients_then_unsubscribe(audience, ids):  # type: ignore[no-untyped-def]
        found = original(audience, ids)  # the batch is re-checked: everyone still eligible
        with Session(for_writing(engine)) as session:  # ...and a moment later one leaves
            person = session.get(Subscriber, people[3].id)
            assert person is not None
            runtime.self_service.unsubscribe(
                session, person, "weekly", Evidence(ConsentChannel.one_click)
            )
        return found

    worker.audience.recipients = recipients_then_unsubscribe  # type: ignore[method-assign]
    asyncio.run(drain(worker))
    assert people[3].email not in {r.rcpt_tos[0] for r in smtp_server.received}
    assert len(smtp_server.received) == 3


def test_pause_holds_the_queue_and_cancel_skips_the_rest(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, _people = seed(app, engine, 10)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issues.pause(session, issue)
        session.commit()
    worker = worker_for(app, engine, smtp_server)
    assert asyncio.run(worker.run_once()) == 0  # nothing is claimed while paused
    assert smtp_server.received == []
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issues.cancel(session, issue)
        session.commit()
    assert {d.status for d in deliveries(engine, issue_id)} == {DeliveryStatus.skipped}
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        with pytest.raises(InvalidTransition, match="cannot be sending"):
            issues.resume(session, issue)


def test_progress_counts_the_deliveries(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, _people = seed(app, engine, 8)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    with Session(engine) as session:
        before = queue.progress(session, issue_id)
    assert before is not None
    assert before.counts["queued"] == 8
    assert before.done == 0
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    with Session(engine) as session:
        after = queue.progress(session, issue_id)
    assert after is not None
    assert after.counts["sent"] == 8
    assert after.status == "sent"
    assert after.rate_per_second > 0


def test_pause_stops_new_transactions_within_two_seconds(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    import threading
    import time as clock

    issue_id, _people = seed(app, engine, 120)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    smtp_server.delay = 0.02  # about 200 messages a second through 4 connections
    worker = worker_for(app, engine, smtp_server)
    paused_at: list[float] = []

    def pause_soon() -> None:
        smtp_server.wait_for(20)
        with Session(for_writing(engine)) as session:
            issue = session.get(Issue, issue_id)
            assert issue is not None
            issues.pause(session, issue)
            session.commit()
        paused_at.append(clock.monotonic())

    pauser = threading.Thread(target=pause_soon)
    pauser.start()
    asyncio.run(drain(worker))
    pauser.join()
    after = len(smtp_server.received)
    clock.sleep(0.5)
    assert len(smtp_server.received) == after  # nothing more leaves while paused
    assert after < 120
    # what the worker still sent after the pause fits in the time it may take to notice
    assert (after - 20) <= 2.0 * 200
    assert status_of(engine, issue_id) is IssueStatus.paused
    outstanding = [d for d in deliveries(engine, issue_id) if d.status is DeliveryStatus.queued]
    assert len(outstanding) == 120 - after  # the rest is back in the queue, untouched


def test_a_refusal_of_the_mailbox_suppresses_but_a_content_refusal_does_not(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 4)
    smtp_server.refuse(people[0].email, "550 5.1.1 <x>: Recipient address rejected: User unknown")
    smtp_server.refuse(people[1].email, "554 5.7.1 Message rejected as spam")
    smtp_server.refuse(people[2].email, "552 5.2.2 Mailbox full")
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    worker = worker_for(app, engine, smtp_server)
    worker.bounces = runtime.feedback()
    asyncio.run(drain(worker))
    with Session(engine) as session:
        suppressed = {s.address_digest: s.reason for s in session.exec(select(Suppression)).all()}
        scores = {
            p.email: p.bounce_score
            for p in session.exec(select(Subscriber).order_by(col(Subscriber.id))).all()
        }
        issue = session.get(Issue, issue_id)
        assert issue is not None
    assert suppressed == {people[0].address_digest: SuppressionReason.hard_bounce}
    assert [scores[p.email] for p in people[1:]] == [0, 1, 0]  # the full mailbox scores
    assert (issue.hard_bounces, issue.blocks) == (1, 1)  # the spam block counts as a block


def test_a_refusal_is_stored_with_its_status_and_without_the_address_it_quotes(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 2)
    refused = people[0].email
    smtp_server.refuse(refused, f"550 5.1.1 <{refused}>: Recipient address rejected")
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    stored = {d.subscriber_id: d for d in deliveries(engine, issue_id)}
    failed, sent = stored[people[0].id], stored[people[1].id]
    assert failed.last_reply == "5.1.1 <address>: Recipient address rejected"
    assert (failed.last_code, failed.last_enhanced_status) == (550, "5.1.1")
    assert sent.last_reply is not None
    assert people[1].email not in sent.last_reply
    assert sent.last_enhanced_status is None


def test_the_links_of_a_sent_message_carry_only_its_delivery_token_and_work(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, [person, other] = seed(app, engine, 2)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    received = {r.rcpt_tos[0]: r for r in smtp_server.received}
    mine = received[person.email]
    token = mine.mail_from.split("+", 1)[1].split("@", 1)[0]
    message = parse(mine.data)
    unsubscribe = message["List-Unsubscribe"].split(",")[0].strip("<> ")
    assert unsubscribe == f"http://testserver/u/{token}"
    raw = mine.data.decode("utf-8", "replace")
    assert person.token_key not in raw
    assert f"http://testserver/preferences/{token}" in raw.replace("=\r\n", "")

    with TestClient(app) as client:
        page = client.get(f"/preferences/{token}")  # offers to mail the person their link
        assert page.status_code == 200
        assert person.email not in page.text
        assert f"/preferences/{token}/link" in page.text
        assert client.get("/preferences/" + "a" * 26).status_code == 400
        answer = client.post(
            f"/u/{token}",
            data={"List-Unsubscribe": "One-Click"},
        )
        assert answer.status_code == 200, answer.text
    with Session(engine) as session:
        statuses = dict(session.exec(select(Subscription.subscriber_id, Subscription.status)).all())
    assert statuses[person.id or 0] is SubscriptionStatus.unsubscribed
    assert statuses[other.id or 0] is SubscriptionStatus.confirmed


def test_messages_are_composed_off_the_event_loop_each_once(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id, people = seed(app, engine, 30)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    composed: list[tuple[int, str]] = []
    original = PreparedIssue.message

    def recording(self: PreparedIssue, recipient: Recipient, token: str, *args: str) -> bytes:
        composed.append((threading.get_ident(), recipient.address))
        return original(self, recipient, token, *args)

    monkeypatch.setattr(PreparedIssue, "message", recording)
    loop_threads: list[int] = []

    async def scenario() -> None:
        loop_threads.append(threading.get_ident())
        await drain(worker_for(app, engine, smtp_server))

    asyncio.run(scenario())
    per_recipient = [address for _, address in composed if address != "sample@example.invalid"]
    assert sorted(per_recipient) == sorted(p.email for p in people)  # once each
    assert loop_threads[0] not in {thread for thread, _ in composed}


def test_resuming_an_issue_with_nothing_left_marks_it_sent(app: FastAPI, engine: Engine) -> None:
    issue_id, _people = seed(app, engine, 3)
    runtime_of(app).start_issue(issue_id)
    claims = queue.claim(engine, worker="w", limit=3, lease=timedelta(minutes=5))
    transition(engine, issue_id, issues.pause)  # paused while its last batch was out
    queue.record(engine, [Result(c, DeliveryStatus.sent, 250, "ok") for c in claims])
    assert status_of(engine, issue_id) is IssueStatus.paused
    transition(engine, issue_id, issues.resume)
    assert status_of(engine, issue_id) is IssueStatus.sent


def test_a_worker_whose_lease_renewal_fails_stops_sending_and_gives_the_rest_back(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id, people = seed(app, engine, 40)
    runtime_of(app).start_issue(issue_id)
    smtp_server.delay = 0.05  # 4 connections: about 80 a second, half a second for all
    worker = worker_for(app, engine, smtp_server, batch=40, lease=timedelta(seconds=0.6))

    def refused(*_args: object, **_kwargs: object) -> set[int]:
        raise RuntimeError("the store refuses writes")

    monkeypatch.setattr(queue, "renew", refused)  # the first renewal is due after 0.2 s
    asyncio.run(one_batch(worker))
    stored = Counter(d.status for d in deliveries(engine, issue_id))
    assert worker.halted is not None
    assert "renewing the lease failed" in worker.halted
    assert 0 < len(smtp_server.received) < len(people)
    assert stored[DeliveryStatus.sent] == len(smtp_server.received)  # each one recorded
    assert stored[DeliveryStatus.queued] == len(people) - len(smtp_server.received)


def test_a_worker_whose_lease_renewal_stalls_sends_nothing_once_the_lease_may_be_gone(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id, people = seed(app, engine, 60)
    runtime_of(app).start_issue(issue_id)
    smtp_server.delay = 0.05  # 4 connections: about 80 a second, 0.75 s for all
    worker = worker_for(
        app, engine, smtp_server, batch=60, lease=timedelta(seconds=0.6), connections=4
    )
    stalled = threading.Event()

    def stall(*_args: object, **_kwargs: object) -> set[int]:
        stalled.wait(10)  # the renewal never comes back while the batch is sent
        return set()

    monkeypatch.setattr(queue, "renew", stall)
    try:
        asyncio.run(one_batch(worker, stalled))
    finally:
        stalled.set()
    assert worker.halted is not None
    assert "lease ran out" in worker.halted
    assert 0 < len(smtp_server.received) < len(people)
    stored = Counter(d.status for d in deliveries(engine, issue_id))
    assert stored[DeliveryStatus.sent] == len(smtp_server.received)


async def one_batch(worker: DeliveryWorker, done: threading.Event | None = None) -> None:
    await worker.run_once()
    await worker.close()
    if done is not None:
        done.set()  # lets a stalled renewal's thread end with the loop


def test_a_worker_asked_to_stop_sends_nothing_more_and_gives_the_rest_back(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 120)
    runtime_of(app).start_issue(issue_id)
    # 50 at once (the throttle's burst), then 2 a second: the rest of the batch would take
    # half a minute, longer than `mailmag serve` waits for its worker before cancelling it.
    worker = worker_for(app, engine, smtp_server, batch=120, per_second=2.0)

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        while len(smtp_server.received) < 52:
            await asyncio.sleep(0.01)
        worker.stop()  # SIGTERM
        await asyncio.wait_for(running, STOP_GRACE_SECONDS)

    asyncio.run(scenario())
    stored = Counter(d.status for d in deliveries(engine, issue_id))
    assert len(smtp_server.received) < len(people)
    assert stored[DeliveryStatus.sent] == len(smtp_server.received)  # each one recorded
    assert stored[DeliveryStatus.sending] == 0  # nothing waits for its lease to run out
    assert stored[DeliveryStatus.queued] == len(people) - len(smtp_server.received)


def test_a_relay_reply_holding_a_nul_is_stored_and_stops_nothing(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 6)
    # PostgreSQL text holds no NUL: one such reply made every store of the batch fail, and
    # the worker held its outcomes, retrying, for ever.
    smtp_server.refuse(people[1].email, "550 5.1.1 No such\x00user")
    runtime_of(app).start_issue(issue_id)
    worker = worker_for(app, engine, smtp_server)

    async def scenario() -> None:
        await asyncio.wait_for(drain(worker), 30)

    asyncio.run(scenario())
    by_person = {d.subscriber_id: d for d in deliveries(engine, issue_id)}
    refused = by_person[people[1].id]
    assert worker.halted is None
    assert refused.status is DeliveryStatus.failed
    assert refused.last_reply is not None
    assert "No such" in refused.last_reply
    assert "\x00" not in refused.last_reply
    assert [d.status for d in by_person.values()].count(DeliveryStatus.sent) == 5


def test_an_issue_whose_last_outcomes_are_stored_after_a_failure_is_marked_sent(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id, people = seed(app, engine, 6)
    runtime_of(app).start_issue(issue_id)
    original = queue.record
    refused: list[int] = []

    def refused_once(engine: Engine, results: list[Result]) -> int:
        if not refused:  # the batch's one store: its outcomes are held and stored again
            refused.append(len(results))
            raise RuntimeError("database or disk is full")
        return original(engine, results)

    monkeypatch.setattr(queue, "record", refused_once)
    worker = worker_for(app, engine, smtp_server, store_retry=0.05)
    asyncio.run(drain(worker))
    assert refused == [len(people)]
    assert worker.halted is not None
    assert all(d.status is DeliveryStatus.sent for d in deliveries(engine, issue_id))
    # Nothing is left for any worker to claim, so nothing else would ever mark it sent.
    assert status_of(engine, issue_id) is IssueStatus.sent


def test_cancel_stops_a_batch_waiting_for_the_relay_within_about_a_second(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """Every delivery of a batch may already wait for the relay's one connection when staff
    cancel: each looks at the issue again right before its transaction (the cached status
    is at most ``status_ttl`` old), not only when it began."""
    import threading

    issue_id, people = seed(app, engine, 30)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    smtp_server.delay = 0.25  # one connection: four messages a second
    transport = SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port, pool_size=1))
    worker = DeliveryWorker(
        engine,
        runtime.audience,
        runtime.preparer,
        transport,
        runtime.delivery_tokens,
        WorkerConfig(batch=30, connections=1),
    )
    at_cancel: list[int] = []

    def cancel_soon() -> None:
        smtp_server.wait_for(3)
        transition(engine, issue_id, issues.cancel)
        at_cancel.append(len(smtp_server.received))

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    asyncio.run(drain(worker))
    canceller.join()
    # After the cancel: the transaction under way, and those begun before the cached status
    # was a second old (four a second), at most.
    assert len(smtp_server.received) - at_cancel[0] <= 1 + 4
    statuses = {d.status for d in deliveries(engine, issue_id)}
    assert statuses <= {DeliveryStatus.sent, DeliveryStatus.skipped}
    assert len(people) == 30


def test_a_heartbeat_that_dies_stops_its_batches_and_says_so(
    app: FastAPI,
    engine: Engine,
    smtp_server: SMTPSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a heartbeat the leases would run out unrenewed while the batch sends on."""

    async def broken(_self: DeliveryWorker) -> None:
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(DeliveryWorker, "_renew_leases", broken)
    issue_id, _people = seed(app, engine, 20)
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    smtp_server.delay = 0.05
    worker = worker_for(app, engine, smtp_server, batch=20, connections=1)

    async def one_batch() -> None:
        await worker.run_once()
        await worker.close()

    with caplog.at_level(logging.ERROR, logger="mailer.worker"):
        asyncio.run(one_batch())
    assert "the lease heartbeat failed (RuntimeError: something unforeseen)" in caplog.text
    assert worker.halted is not None
    assert len(smtp_server.received) < 20  # it stopped sending
    queued = [d for d in deliveries(engine, issue_id) if d.status is DeliveryStatus.queued]
    assert len(queued) == 20 - len(smtp_server.received)  # the rest went back at once
