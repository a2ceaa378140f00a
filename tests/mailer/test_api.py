"""The marketing API as marketing uses it: with a staff token, against a real SMTP server,
the web process's own worker and scheduler doing the sending."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.models import Issue
from subscriptions.auth import issue_token
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import ConsentChannel, Magazine, StaffRole, StaffUser, Subscriber
from subscriptions.runtime import Runtime
from tests.support.smtp import SMTPSink

BODY = "<h1>Hi {{ subscriber.name }}</h1><p>News of the week.</p>"


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def token_for(engine: Engine, role: StaffRole) -> str:
    with Session(for_writing(engine)) as session:
        user = StaffUser(email=f"{role.value}@example.com", role=role, password_hash="x")
        session.add(user)
        session.flush()
        token = issue_token(session, user, label="test")
        session.commit()
    return token


@pytest.fixture
def marketer(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(engine, StaffRole.marketer)}"}


def weekly_with_readers(app: FastAPI, engine: Engine, count: int) -> int:
    runtime = runtime_of(app)
    runtime.sync_magazines()
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    with Session(for_writing(engine)) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        for n in range(count):
            email = f"api{n}@example.org"
            person = Subscriber(
                email=email, name=f"Reader {n}", address_digest=runtime.optin.hasher.digest(email)
            )
            session.add(person)
            session.flush()
            runtime.optin.lifecycle.request(session, person, weekly, evidence)
            runtime.optin.lifecycle.confirm(session, person, evidence)
        session.commit()
        assert weekly.id is not None
        return weekly.id


def create(client: TestClient, headers: dict[str, str], magazine_id: int, **extra: Any) -> Any:
    body = {"magazine_id": magazine_id, "subject": "Weekly news", "html_body": BODY, **extra}
    return client.post("/api/v1/issues", json=body, headers=headers)


def wait_for_status(
    client: TestClient, headers: dict[str, str], issue_id: int, status: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found: dict[str, Any] = client.get(
            f"/api/v1/issues/{issue_id}/status", headers=headers
        ).json()
        if found["status"] == status:
            return found
        time.sleep(0.1)
    raise AssertionError(f"issue {issue_id} did not become {status}: {found}")


def test_the_api_needs_a_marketer_token(client: TestClient, engine: Engine) -> None:
    assert client.get("/api/v1/issues").status_code == 401
    bad = {"Authorization": "Bearer mm_not-a-real-token"}
    assert client.get("/api/v1/issues", headers=bad).status_code == 401
    viewer = {"Authorization": f"Bearer {token_for(engine, StaffRole.viewer)}"}
    assert client.get("/api/v1/issues", headers=viewer).status_code == 200  # aggregates
    refused = client.post("/api/v1/issues", headers=viewer, json={"magazine_id": 1})
    assert refused.status_code == 403


def test_hostile_or_broken_templates_are_refused_on_save(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    magazine_id = weekly_with_readers(app, engine, 0)
    escape = create(client, marketer, magazine_id, html_body="{{ ''.__class__.__mro__ }}")
    assert escape.status_code == 422
    assert "unsafe" in escape.json()["detail"]
    unknown = create(client, marketer, magazine_id, subject="{{ settings.secret_key }}")
    assert unknown.status_code == 422
    injected = create(client, marketer, magazine_id, subject="Hi\r\nBcc: x@example.com")
    assert injected.status_code == 422
    assert (
        create(
            client,
            marketer,
            999,
        ).status_code
        == 422
    )
    with Session(engine) as session:
        assert session.exec(select(Issue)).all() == []


def test_write_preview_test_send_and_send_now(
    client: TestClient,
    app: FastAPI,
    engine: Engine,
    marketer: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    magazine_id = weekly_with_readers(app, engine, 12)
    created = create(client, marketer, magazine_id)
    assert created.status_code == 201
    issue = created.json()
    assert issue["status"] == "draft"
    assert issue["merge_fields"] == ["name"]

    preview = client.post(
        f"/api/v1/issues/{issue['id']}/preview", json={"name": "Ann"}, headers=marketer
    )
    assert preview.status_code == 200
    assert "Hi Ann" in preview.json()["html"]
    assert "refuse further mail" in preview.json()["text"]

    tested = client.post(
        f"/api/v1/issues/{issue['id']}/test-send",
        json={"addresses": ["qa@example.com"]},
        headers=marketer,
    )
    assert tested.json() == {"results": {"qa@example.com": "sent"}}
    assert smtp_server.wait_for(1)[0].rcpt_tos == ("qa@example.com",)

    started = client.post(f"/api/v1/issues/{issue['id']}/send-now", headers=marketer)
    assert started.status_code == 200
    done = wait_for_status(client, marketer, issue["id"], "sent")
    assert done["counts"]["sent"] == 12
    assert done["percent"] == 100.0
    readers = {r.rcpt_tos[0] for r in smtp_server.wait_for(13)[1:]}
    assert readers == {f"api{n}@example.org" for n in range(12)}
    again = client.post(f"/api/v1/issues/{issue['id']}/send-now", headers=marketer)
    assert again.status_code == 409


def test_a_scheduled_issue_starts_on_time(
    client: TestClient,
    app: FastAPI,
    engine: Engine,
    marketer: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    magazine_id = weekly_with_readers(app, engine, 3)
    issue = create(client, marketer, magazine_id).json()
    naive = client.post(
        f"/api/v1/issues/{issue['id']}/schedule",
        json={"at": "2030-01-01T09:00:00"},
        headers=marketer,
    )
    assert naive.status_code == 422  # a time without a zone is refused
    soon = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    soon += timedelta(seconds=1)
    scheduled = client.post(
        f"/api/v1/issues/{issue['id']}/schedule", json={"at": soon.isoformat()}, headers=marketer
    )
    assert scheduled.status_code == 200
    assert scheduled.json()["status"] == "scheduled"
    stored = datetime.fromisoformat(scheduled.json()["scheduled_at"])
    assert stored == soon.astimezone(UTC)
    wait_for_status(client, marketer, issue["id"], "sent", timeout=30)
    assert len(smtp_server.wait_for(3)) == 3


def test_transitions_that_make_no_sense_are_refused(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    magazine_id = weekly_with_readers(app, engine, 0)
    issue = create(client, marketer, magazine_id).json()
    assert client.post(f"/api/v1/issues/{issue['id']}/pause", headers=marketer).status_code == 409
    # a draft has sent nothing, so it is not cancelled; an issue that went out is final
    assert client.post(f"/api/v1/issues/{issue['id']}/cancel", headers=marketer).status_code == 409
    assert (
        client.post(f"/api/v1/issues/{issue['id']}/send-now", headers=marketer).status_code == 200
    )
    wait_for_status(client, marketer, issue["id"], "sent")
    assert client.post(f"/api/v1/issues/{issue['id']}/resume", headers=marketer).status_code == 409
    changed = client.patch(
        f"/api/v1/issues/{issue['id']}", json={"subject": "New"}, headers=marketer
    )
    assert changed.status_code == 409
    assert client.get("/api/v1/issues/4242", headers=marketer).status_code == 404


def test_a_hostile_template_slipped_into_the_store_is_refused_at_preview_and_send(
    client: TestClient,
    app: FastAPI,
    engine: Engine,
    marketer: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    magazine_id = weekly_with_readers(app, engine, 2)
    with Session(for_writing(engine)) as session:  # behind the API's back
        issue = Issue(
            magazine_id=magazine_id,
            subject="x",
            html_body="{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        )
        session.add(issue)
        session.commit()
        issue_id = issue.id
    assert client.post(f"/api/v1/issues/{issue_id}/preview", headers=marketer).status_code == 422
    assert client.post(f"/api/v1/issues/{issue_id}/send-now", headers=marketer).status_code == 422
    tested = client.post(
        f"/api/v1/issues/{issue_id}/test-send",
        json={"addresses": ["qa@example.com"]},
        headers=marketer,
    )
    assert tested.status_code == 422
    assert smtp_server.received == []


def test_text_with_a_lone_surrogate_is_refused_and_nothing_is_stored(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    """JSON's "\\ud800" decodes to a string no mail, page or database can carry: a clear 422,
    never a 500, and no row."""
    magazine_id = weekly_with_readers(app, engine, 0)
    for field in ("subject", "preheader", "html_body", "text_body"):
        body = {"magazine_id": magazine_id, "subject": "Weekly news", "html_body": BODY}
        raw = json.dumps(body | {field: "News \ud800 today"})  # ASCII, with the \ud800 escape
        answer = client.post(
            "/api/v1/issues",
            content=raw.encode(),
            headers=marketer | {"Content-Type": "application/json"},
        )
        assert answer.status_code == 422, (field, answer.status_code, answer.text)
        assert "unicode" in answer.text
    listing = client.get("/api/v1/issues", headers=marketer).json()
    assert listing == [] or listing.get("items", listing) == []


def test_a_field_that_must_hold_text_cannot_be_patched_to_null(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    """Found by the fuzzing soak: a PATCH setting the subject to null was a 500 (the NOT NULL
    column refused it at commit). Leaving a field out keeps it; null is refused with a 422,
    and clears only the fields that may be empty."""
    issue = create(client, marketer, weekly_with_readers(app, engine, 0)).json()
    for field in ("subject", "preheader", "html_body", "locale"):
        answer = client.patch(f"/api/v1/issues/{issue['id']}", json={field: None}, headers=marketer)
        assert answer.status_code == 422, (field, answer.text)
        assert "not set to null" in answer.text
    cleared = client.patch(
        f"/api/v1/issues/{issue['id']}", json={"text_body": None, "route": None}, headers=marketer
    )
    assert cleared.status_code == 200
    again = client.get(f"/api/v1/issues/{issue['id']}", headers=marketer).json()
    assert {k: again[k] for k in ("subject", "preheader", "html_body", "locale")} == {
        k: issue[k] for k in ("subject", "preheader", "html_body", "locale")
    }
    spec = client.get("/openapi.json").json()["components"]["schemas"]["IssueUpdate"]
    assert spec["properties"]["subject"].get("type") == "string"  # null is not offered
