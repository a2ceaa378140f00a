"""The audit log is hash-chained and names the first bad row; a magazine export carries only
the fields asked for, only the chosen people, and is audited with everyone it contained."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from subscriptions import audit
from subscriptions.audit import Actor
from subscriptions.db import for_writing
from subscriptions.errors import InvalidInput
from subscriptions.exports import export_magazine
from subscriptions.models import AuditEvent, AuditSubject, StaffRole
from tests.mailer.test_api import token_for
from tests.mailer.test_sending import seed

OFFICER = Actor("staff:1 privacy@example.com", "192.0.2.7")


def exported(engine: Engine, fmt: str = "csv", fields: tuple[str, ...] = ("email", "name")) -> str:
    buffer = io.StringIO()
    with Session(for_writing(engine)) as session:
        export_magazine(session, OFFICER, magazine="weekly", fields=fields, fmt=fmt, out=buffer)
        session.commit()
    return buffer.getvalue()


def test_an_export_holds_only_the_fields_asked_for_and_is_audited(
    app: FastAPI, engine: Engine
) -> None:
    _, people = seed(app, engine, 3)
    rows = list(csv.DictReader(io.StringIO(exported(engine))))
    assert sorted(r["email"] for r in rows) == sorted(p.email for p in people)
    assert set(rows[0]) == {"email", "name"}  # no company, though every person has one
    as_json = json.loads(exported(engine, "json", ("email", "status")))
    assert {r["status"] for r in as_json} == {"confirmed"}
    with Session(engine) as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()
        subjects = session.exec(
            select(AuditSubject.subject_digest).where(AuditSubject.audit_id == events[0].id)
        ).all()
        result = audit.verify(session)
    assert [(e.actor, e.action, e.target, e.subjects) for e in events] == [
        (OFFICER.name, "export", "magazine:weekly", 3),
        (OFFICER.name, "export", "magazine:weekly", 3),
    ]
    assert json.loads(events[0].detail)["fields"] == ["email", "name"]
    assert events[0].source == "192.0.2.7"
    assert sorted(subjects) == sorted(p.address_digest for p in people)
    assert result.ok
    assert result.checked == 2


@pytest.mark.parametrize(
    ("fields", "fmt", "message"),
    [
        (("email", "password"), "csv", "password cannot be exported"),
        ((), "csv", "name the fields"),
        (("email",), "xml", "choose one of csv, json"),
    ],
)
def test_a_bad_export_request_is_refused_and_nothing_is_audited(
    app: FastAPI, engine: Engine, fields: tuple[str, ...], fmt: str, message: str
) -> None:
    seed(app, engine, 1)
    with pytest.raises(InvalidInput, match=message):
        exported(engine, fmt, fields)
    with Session(engine) as session:
        assert session.exec(select(AuditEvent)).all() == []


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE audit_event SET actor = 'someone else' WHERE seq = 2", "row 2 was altered"),
        ("DELETE FROM audit_event WHERE seq = 2", "row 2 is missing"),
        ("DELETE FROM audit_event WHERE seq = 3", "rows at the end were removed"),
        (
            "DELETE FROM audit_subject WHERE id = (SELECT MIN(id) FROM audit_subject)",
            "row 1: the people it concerns were altered",
        ),
    ],
)
def test_audit_verify_names_the_first_bad_row(
    app: FastAPI, engine: Engine, tamper: str, problem: str
) -> None:
    seed(app, engine, 2)
    for _ in range(3):
        exported(engine)
    with Session(engine) as session:
        assert audit.verify(session).ok
    with for_writing(engine).begin() as conn:
        conn.execute(text(tamper))
    with Session(engine) as session:
        result = audit.verify(session)
    assert not result.ok
    assert problem in result.problem


def test_only_the_privacy_officer_exports_through_the_api(app: FastAPI, engine: Engine) -> None:
    _, people = seed(app, engine, 2)
    url = "/api/v1/privacy/magazines/weekly/subscribers?fields=email,title"
    with TestClient(app) as client:
        for role in (StaffRole.marketer, StaffRole.viewer):
            answer = client.get(url, headers=bearer(token_for(engine, role)))
            assert answer.status_code == 403
        assert client.get(url).status_code == 401
        officer = bearer(token_for(engine, StaffRole.privacy_officer))
        answer = client.get(url, headers=officer)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/csv")
        assert sorted(answer.text.splitlines()[1:]) == sorted(f"{p.email}," for p in people)
        refused = client.get(url.replace("title", "secret"), headers=officer)
        assert refused.status_code == 422
        assert "secret cannot be exported" in refused.json()["detail"]
    with Session(engine) as session:
        [event] = session.exec(select(AuditEvent)).all()
    assert event.actor.startswith("staff:")
    assert event.subjects == 2


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
