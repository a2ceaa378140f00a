"""Retention jobs delete exactly what is due and nothing under a legal hold; every run is
recorded; the consent ledger still verifies after its rows are purged."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailer.clock import utcnow
from subscriptions import consent, maintenance
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    AuditEvent,
    ConsentChannel,
    ConsentEvent,
    LegalHold,
    RetentionRun,
    Subscriber,
    TransferRecord,
)
from subscriptions.runtime import Runtime
from subscriptions.transfers import record_transfer
from tests.mailer.test_sending import seed

YEARS_AHEAD = timedelta(days=4 * 365)


def rows_of(engine: Engine, digest: str) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(ConsentEvent)
                .where(ConsentEvent.subject_digest == digest)
            ).one()
        )


def run(app: FastAPI, engine: Engine, ahead: timedelta = YEARS_AHEAD) -> maintenance.Purged:
    runtime: Runtime = app.state.runtime
    return maintenance.run_once(engine, runtime.optin, timedelta(hours=2), now=utcnow() + ahead)


def test_consent_rows_are_purged_when_due_but_not_under_a_legal_hold(
    app: FastAPI, engine: Engine
) -> None:
    runtime: Runtime = app.state.runtime
    _, [leaver, held, stays] = seed(app, engine, 3)
    with Session(for_writing(engine)) as session:
        for person in (leaver, held):
            stored = session.get(Subscriber, person.id)
            assert stored is not None
            runtime.self_service.unsubscribe(
                session, stored, "weekly", Evidence(ConsentChannel.link)
            )
        session.add(LegalHold(subject_digest=held.address_digest, reason="dispute", created_by="t"))
        record_transfer(
            session,
            party="sakura-america",
            party_kind="joint_user",
            fields=["email"],
            people=[(held.id, held.address_digest)],
            purpose="joint use",
            legal_basis="consent",
            triggered_by="test",
        )
        session.commit()
    assert rows_of(engine, leaver.address_digest) == 3  # request, confirm, withdraw

    early = run(app, engine, timedelta(days=20))  # within a month of the withdrawal: nothing
    assert early.consent_rows == 0

    purged = run(app, engine)
    assert purged.consent_rows == 3
    assert purged.held == 3 + 1  # the held person's three rows and the transfer record
    assert rows_of(engine, leaver.address_digest) == 0
    assert rows_of(engine, held.address_digest) == 3
    assert rows_of(engine, stays.address_digest) == 2  # still subscribed: kept
    with Session(engine) as session:
        assert consent.verify(session).ok  # purged rows keep their place in the chain
        blanked = session.exec(select(ConsentEvent).where(col(ConsentEvent.purged))).all()
        assert {(e.subject_digest, e.ip, e.user_agent, e.subscriber_id) for e in blanked} == {
            ("", None, None, None)
        }
        runs = session.exec(select(RetentionRun).order_by(col(RetentionRun.id))).all()
        assert runs[-1].deleted["consent_rows"] == 3
        assert runs[-1].held == 4
        assert session.exec(select(TransferRecord)).all() != []  # held
        audited = session.exec(select(AuditEvent).where(AuditEvent.action == "retention")).all()
        assert len(audited) == 1

    assert run(app, engine).consent_rows == 0  # nothing more is due

    with Session(for_writing(engine)) as session:
        hold = session.exec(select(LegalHold)).one()
        hold.released_at = utcnow()
        session.add(hold)
        session.commit()
    released = run(app, engine)
    assert released.consent_rows == 3
    assert released.transfer_records == 1
    with Session(engine) as session:
        assert consent.verify(session).ok
