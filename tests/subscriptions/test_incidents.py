"""The incident register counts the affected people and says whether and by when to report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions import audit, incidents
from subscriptions.audit import Actor
from subscriptions.db import for_writing
from subscriptions.errors import InvalidInput
from subscriptions.models import AuditEvent, IncidentKind
from tests.mailer.test_sending import seed

OFFICER = Actor("staff:2 privacy@example.com", "192.0.2.8")


def test_a_small_accidental_leak_needs_no_report_but_is_recorded(
    app: FastAPI, engine: Engine
) -> None:
    _, people = seed(app, engine, 3)
    discovered = utcnow() - timedelta(days=1)
    with Session(for_writing(engine)) as session:
        incident = incidents.open_incident(
            session,
            OFFICER,
            title="Mail merge sent to the wrong list",
            kind=IncidentKind.leak,
            discovered_at=discovered,
        )
        digests = [p.address_digest for p in people[:2]] + ["f" * 64]  # one erased person
        assert incidents.link_addresses(session, OFFICER, incident, digests) == 3
        assert incidents.link_addresses(session, OFFICER, incident, digests[:1]) == 0
        found = incidents.assess(session, incident)
        session.commit()
    assert (found.people, found.must_report, found.final_due) == (3, False, None)
    with Session(engine) as session:
        actions = session.exec(select(AuditEvent.action).order_by(col(AuditEvent.seq))).all()
        assert audit.verify(session).ok
    assert actions == ["incident_opened", "incident_linked", "incident_linked"]


def test_a_wrongful_leak_or_many_people_must_be_reported_with_deadlines(
    app: FastAPI, engine: Engine
) -> None:
    seed(app, engine, 4)
    discovered = utcnow() - timedelta(hours=5)
    with Session(for_writing(engine)) as session:
        attack = incidents.open_incident(
            session,
            OFFICER,
            title="Unauthorised access to the list",
            kind=IncidentKind.suspected,
            discovered_at=discovered,
            unauthorised_access=True,
        )
        assert incidents.link_magazine(session, OFFICER, attack, "weekly") == 4
        assert incidents.link_magazine(session, OFFICER, attack, "weekly") == 0
        linked = session.exec(
            select(AuditEvent.subjects)
            .where(AuditEvent.action == "incident_linked")
            .order_by(col(AuditEvent.seq))
        ).all()
        assert linked == [4, 0]  # the audit log names the people each link concerned
        found = incidents.assess(session, attack)
        many = incidents.open_incident(
            session, OFFICER, title="Lost laptop", kind=IncidentKind.loss, discovered_at=discovered
        )
        incidents.link_addresses(session, OFFICER, many, [f"{n:064x}" for n in range(1001)])
        lots = incidents.assess(session, many)
        incidents.mark(session, OFFICER, many, "reported")
        session.commit()
    assert found.must_report
    assert found.people == 4
    assert found.preliminary_due == discovered + timedelta(days=3)
    assert found.final_due == discovered + timedelta(days=60)  # wrongful purpose: 60 days
    assert lots.must_report
    assert lots.final_due == discovered + timedelta(days=30)
    assert "1001 people are affected" in lots.reasons[0]


def test_bad_incident_input_is_refused(app: FastAPI, engine: Engine) -> None:
    with Session(for_writing(engine)) as session:
        with pytest.raises(InvalidInput, match="title"):
            incidents.open_incident(
                session, OFFICER, title=" ", kind=IncidentKind.leak, discovered_at=utcnow()
            )
        with pytest.raises(InvalidInput, match="future"):
            incidents.open_incident(
                session,
                OFFICER,
                title="x",
                kind=IncidentKind.leak,
                discovered_at=utcnow() + timedelta(days=1),
            )
        with pytest.raises(InvalidInput, match="no incident #9"):
            incidents.get(session, 9)
