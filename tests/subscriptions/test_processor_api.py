"""The pull API: a processor's machine credential reaches only its own batches, outcomes and
opt-out notices, for as long as its contract and the issue's retention allow; every batch is
recorded per person; split routes give each recipient to exactly one processor."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import timedelta

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscriptions.app import create_app
from subscriptions.auth import issue_party_credential
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentChannel,
    Magazine,
    PartyCredential,
    PartyNotice,
    Subscriber,
    Suppression,
    TransferRecord,
    TransferSubject,
)
from subscriptions.runtime import Runtime
from tests.mailer.test_processors import with_route
from tests.mailer.test_sending import deliveries, drain, seed, status_of, worker_for
from tests.support.clock import moved_clock
from tests.support.smtp import SMTPSink


@pytest.fixture
def pull_client(routed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(routed_app) as client:
        yield client


def credential(engine: Engine, party: str, kind: str = "processor", days: int = 30) -> str:
    with Session(for_writing(engine)) as session:
        _, token = issue_party_credential(
            session, party, kind, expires_at=utcnow() + timedelta(days=days)
        )
        session.commit()
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pull(client: TestClient, token: str, limit: int = 100) -> httpx.Response:
    return client.post("/processor/v1/batches", json={"limit": limit}, headers=auth(token))


def started_pull_issue(app: FastAPI, engine: Engine, count: int) -> tuple[int, list[Subscriber]]:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, count)
    with_route(engine, issue_id, "sakura-asia", "<p>Dear {{ subscriber.name }}</p>")
    runtime.start_issue(issue_id)
    return issue_id, people


def test_a_processor_pulls_its_batch_reports_outcomes_and_the_issue_finishes(
    routed_app: FastAPI, engine: Engine, smtp_server: SMTPSink, pull_client: TestClient
) -> None:
    issue_id, people = started_pull_issue(routed_app, engine, 5)
    # The delivery worker leaves a pulling processor's deliveries alone.
    asyncio.run(drain(worker_for(routed_app, engine, smtp_server)))
    assert smtp_server.received == []
    token = credential(engine, "sakura-asia")

    answer = pull(pull_client, token, limit=3)
    assert answer.status_code == 200, answer.text
    first = answer.json()["deliveries"]
    rest = pull(pull_client, token).json()["deliveries"]
    assert pull(pull_client, token).json()["deliveries"] == []  # all claimed
    batch = first + rest
    assert sorted(d["address"] for d in batch) == sorted(p.email for p in people)
    for item in batch:
        assert set(item["fields"]) == {"name"}  # what the template uses, nothing more
        raw = base64.b64decode(item["message"]).decode("ascii")
        assert item["fields"]["name"] in raw
        assert "Secret Co" not in raw
        assert item["return_path"].startswith(f"bounce+{item['token']}@")

    outcomes = [{"token": d["token"], "status": "sent", "code": 250} for d in batch[:4]]
    outcomes.append({"token": batch[4]["token"], "status": "failed", "code": 550, "reply": "no"})
    answer = pull_client.post(
        "/processor/v1/outcomes", json={"outcomes": outcomes}, headers=auth(token)
    )
    assert answer.json() == {"recorded": 5, "ignored": []}
    assert sorted(d.status for d in deliveries(engine, issue_id)) == [
        DeliveryStatus.failed,
        *[DeliveryStatus.sent] * 4,
    ]
    assert status_of(engine, issue_id) is IssueStatus.sent
    # Reporting again changes nothing: the rows are no longer claimed.
    again = pull_client.post(
        "/processor/v1/outcomes", json={"outcomes": outcomes[:1]}, headers=auth(token)
    )
    assert again.json() == {"recorded": 0, "ignored": [outcomes[0]["token"]]}

    with Session(engine) as session:
        records = session.exec(
            select(TransferRecord).where(TransferRecord.purpose == "pull batch")
        ).all()
        subjects = session.exec(
            select(TransferSubject.subscriber_id).where(
                col(TransferSubject.transfer_id).in_([r.id for r in records])
            )
        ).all()
        used = session.exec(select(PartyCredential)).one().last_used_at
    assert [r.people for r in records] == [3, 2]  # every fetch logged, with whom it held
    assert sorted(s or 0 for s in subjects) == sorted(p.id or 0 for p in people)
    assert used is not None


def test_a_bounce_reported_later_suppresses_and_a_deferral_returns_to_the_queue(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    issue_id, _ = started_pull_issue(routed_app, engine, 2)
    token = credential(engine, "sakura-asia")
    first, second = pull(pull_client, token).json()["deliveries"]
    report = [
        {"token": first["token"], "status": "sent", "code": 250},
        {"token": second["token"], "status": "deferred", "code": 451, "reply": "later"},
    ]
    pull_client.post("/processor/v1/outcomes", json={"outcomes": report}, headers=auth(token))
    bounce = [{"token": first["token"], "status": "bounced", "reply": "550 5.1.1 unknown"}]
    answer = pull_client.post(
        "/processor/v1/outcomes", json={"outcomes": bounce}, headers=auth(token)
    )
    assert answer.json()["recorded"] == 1
    runtime: Runtime = routed_app.state.runtime
    with Session(engine) as session:
        digest = runtime.optin.hasher.digest(first["address"])
        assert session.exec(select(Suppression).where(Suppression.address_digest == digest)).first()
    rows = {d.status for d in deliveries(engine, issue_id)}
    assert rows == {DeliveryStatus.failed, DeliveryStatus.deferred}  # the bounce is its end
    assert status_of(engine, issue_id) is IssueStatus.sending


def test_a_processors_refusals_are_read_by_their_status_like_the_workers(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    """A bad address refused at sending suppresses; a spam block, at sending or reported
    later, counts on the issue and suppresses no one."""
    issue_id, _ = started_pull_issue(routed_app, engine, 3)
    token = credential(engine, "sakura-asia")
    unknown, spam, later = pull(pull_client, token).json()["deliveries"]
    report = [
        {"token": unknown["token"], "status": "failed", "code": 550, "reply": "550 5.1.1 no"},
        {"token": spam["token"], "status": "failed", "code": 554, "reply": "554 5.7.1 spam"},
        {"token": later["token"], "status": "sent", "code": 250},
    ]
    pull_client.post("/processor/v1/outcomes", json={"outcomes": report}, headers=auth(token))
    bounce = [{"token": later["token"], "status": "bounced", "reply": "550 5.7.1 as spam"}]
    pull_client.post("/processor/v1/outcomes", json={"outcomes": bounce}, headers=auth(token))
    runtime: Runtime = routed_app.state.runtime
    with Session(engine) as session:
        suppressed = set(session.exec(select(Suppression.address_digest)).all())
        issue = session.get(Issue, issue_id)
        assert issue is not None
    assert suppressed == {runtime.optin.hasher.digest(unknown["address"])}
    assert (issue.hard_bounces, issue.blocks) == (1, 2)


def test_the_credential_reaches_only_its_own_party_and_nothing_else(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    started_pull_issue(routed_app, engine, 2)
    mine = credential(engine, "sakura-asia")
    [delivery, _] = pull(pull_client, mine).json()["deliveries"]

    assert pull_client.post("/processor/v1/batches").status_code == 401
    assert pull(pull_client, "mp_forged").status_code == 401
    assert pull(pull_client, credential(engine, "sakura-asia", days=-1)).status_code == 401
    smtp_processor = pull(pull_client, credential(engine, "sakura-delivery"))
    assert smtp_processor.status_code == 403
    assert "SMTP" in smtp_processor.json()["detail"]
    joint_user = pull(pull_client, credential(engine, "sakura-america", "joint_user"))
    assert joint_user.status_code == 403
    # Only processors report outcomes; a token that is not one of ours is ignored, unexplained.
    report = {"outcomes": [{"token": delivery["token"], "status": "sent"}]}
    joint = credential(engine, "sakura-america", "joint_user")
    assert (
        pull_client.post("/processor/v1/outcomes", json=report, headers=auth(joint)).status_code
        == 403
    )
    runtime: Runtime = routed_app.state.runtime
    strange = runtime.delivery_tokens.make(10**9)
    answer = pull_client.post(
        "/processor/v1/outcomes",
        json={"outcomes": [{"token": strange, "status": "sent"}]},
        headers=auth(mine),
    )
    assert answer.json() == {"recorded": 0, "ignored": [strange]}
    # Staff routes do not admit a processor credential.
    for path in ("/api/v1/issues", "/api/v1/issues/1/status"):
        assert pull_client.get(path, headers=auth(mine)).status_code in (401, 403)
    # Revoking works from the next request on.
    with Session(for_writing(engine)) as session:
        for stored in session.exec(select(PartyCredential)).all():
            stored.revoked_at = utcnow()
            session.add(stored)
        session.commit()
    assert pull(pull_client, mine).status_code == 401


def test_after_the_window_and_retention_the_processor_gets_403(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    issue_id, _ = started_pull_issue(routed_app, engine, 1)
    token = credential(engine, "sakura-asia")
    [delivery] = pull(pull_client, token).json()["deliveries"]
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.started_at = utcnow() - timedelta(days=3 + 14 + 1)  # window + retention_days
        session.add(issue)
        session.commit()
    report = {"outcomes": [{"token": delivery["token"], "status": "sent"}]}
    answer = pull_client.post("/processor/v1/outcomes", json=report, headers=auth(token))
    assert answer.status_code == 403
    assert "retention period" in answer.json()["detail"]


def test_bad_reports_are_refused_with_a_clear_error(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    token = credential(engine, "sakura-asia")
    bodies: list[dict[str, object]] = [
        {"outcomes": []},
        {"outcomes": [{"token": "x", "status": "sent"}]},
        {"outcomes": [{"token": "a" * 26, "status": "delivered"}]},
        {"outcomes": [{"token": "a" * 26, "status": "sent", "extra": 1}]},
    ]
    for body in bodies:
        answer = pull_client.post("/processor/v1/outcomes", json=body, headers=auth(token))
        assert answer.status_code == 422, body
    assert pull(pull_client, token, limit=0).status_code == 422


def test_opt_outs_reach_the_processor_and_stay_until_acknowledged(
    routed_app: FastAPI, engine: Engine, pull_client: TestClient
) -> None:
    runtime: Runtime = routed_app.state.runtime
    _, people = started_pull_issue(routed_app, engine, 2)
    token = credential(engine, "sakura-asia")
    batch = pull(pull_client, token).json()["deliveries"]
    report = [{"token": d["token"], "status": "sent"} for d in batch]
    pull_client.post("/processor/v1/outcomes", json={"outcomes": report}, headers=auth(token))
    leaver = people[0]
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, leaver.id)
        assert person is not None
        runtime.self_service.unsubscribe(
            session, person, "weekly", Evidence(ConsentChannel.one_click)
        )

    first = pull_client.get("/processor/v1/opt-outs", headers=auth(token)).json()["notices"]
    assert [n["address"] for n in first] == [leaver.email]
    again = pull_client.get("/processor/v1/opt-outs", headers=auth(token)).json()["notices"]
    assert again == first  # not lost if an answer goes astray
    ack = pull_client.post(
        "/processor/v1/opt-outs/ack", json={"ids": [first[0]["id"]]}, headers=auth(token)
    )
    assert ack.json() == {"removed": 1}
    assert pull_client.get("/processor/v1/opt-outs", headers=auth(token)).json()["notices"] == []
    with Session(engine) as session:
        assert session.exec(select(PartyNotice)).all() == []
        records = session.exec(
            select(TransferRecord).where(TransferRecord.purpose == "opt-out notification")
        ).all()
    assert [r.people for r in records] == [1, 1]  # each read is a hand-off, and recorded


def test_a_split_route_gives_each_recipient_to_exactly_one_processor(
    routed_app: FastAPI, engine: Engine
) -> None:
    runtime: Runtime = routed_app.state.runtime
    issue_id, _ = seed(routed_app, engine, 0)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        lifecycle = runtime.optin.lifecycle
        evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
        issue = session.get(Issue, issue_id)
        assert issue is not None
        weekly = session.get(Magazine, issue.magazine_id)
        assert weekly is not None
        for email in ("a@shop.example.sg", "b@x.co.th", "c@example.com", "d@sg.example.jp"):
            person = Subscriber(email=email, address_digest=runtime.optin.hasher.digest(email))
            session.add(person)
            session.flush()
            lifecycle.request(session, person, weekly, evidence)
            lifecycle.confirm(session, person, evidence)
        session.commit()
    with_route(engine, issue_id, "split-by-domain", "<p>Hello</p>")
    assert runtime.start_issue(issue_id) == 4
    with Session(engine) as session:
        rows = session.exec(
            select(Subscriber.email, Delivery.processor).join(
                Delivery, col(Delivery.subscriber_id) == Subscriber.id
            )
        ).all()
        records = session.exec(select(TransferRecord.party, TransferRecord.people)).all()
    assert dict(rows) == {
        "a@shop.example.sg": "sakura-asia",
        "b@x.co.th": "sakura-asia",
        "c@example.com": "sakura-delivery",
        "d@sg.example.jp": "sakura-delivery",
    }
    assert sorted(records) == [("sakura-asia", 2), ("sakura-delivery", 2)]


def test_a_processor_deferring_for_ever_gives_up_at_the_deadline_and_the_issue_ends(
    routed_app: FastAPI, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull API retries a processor's deferrals as the worker retries the relay's: the
    same growing pauses, and no attempt after the issue's start plus MAILMAG_RETRY_DAYS."""
    live = routed_app.state.runtime.settings.model_copy(update={"retry_days": 0.5})
    app = create_app(live, engine=engine, delivery=False)
    issue_id, _ = started_pull_issue(app, engine, 1)
    token = credential(engine, "sakura-asia")
    clock = moved_clock(monkeypatch)
    pulls = 0
    with TestClient(app) as client:
        while pulls < 100:
            batch = pull(client, token).json()["deliveries"]
            if not batch:
                [row] = deliveries(engine, issue_id)
                if row.status is not DeliveryStatus.deferred:
                    break
                clock.move(row.next_attempt_at - clock.now() + timedelta(seconds=1))
                continue
            pulls += 1
            report = [
                {"token": batch[0]["token"], "status": "deferred", "code": 451, "reply": "busy"}
            ]
            answer = client.post(
                "/processor/v1/outcomes", json={"outcomes": report}, headers=auth(token)
            )
            assert answer.json() == {"recorded": 1, "ignored": []}
    [row] = deliveries(engine, issue_id)
    assert row.status is DeliveryStatus.failed
    assert row.last_reply == f"gave up after {pulls} attempts: busy"
    assert status_of(engine, issue_id) is IssueStatus.sent
    assert timedelta(hours=11) < clock.offset <= timedelta(hours=12)
