"""An opt-out reaches every party that holds the person's data, in the same transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.transport import SMTPRelay, SMTPTransport
from subscriptions import parties
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.joint_use import export_for
from subscriptions.models import (
    ConsentChannel,
    ConsentPurpose,
    PartyNotice,
    Subscriber,
    TransferRecord,
)
from subscriptions.runtime import Runtime
from tests.mailer.test_processors import with_route
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.smtp import SMTPSink


def sent_through_processor(app: FastAPI, engine: Engine, smtp_server: SMTPSink) -> list[Subscriber]:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 3)
    with_route(engine, issue_id, "sakura-delivery", "<p>Dear {{ subscriber.name }}</p>")
    runtime.start_issue(issue_id)
    worker = worker_for(app, engine, smtp_server)
    worker.routes = {
        "sakura-delivery": SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port))
    }
    asyncio.run(drain(worker))
    return people


def notices(engine: Engine) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        return sorted(
            (n.party, n.address, n.change) for n in session.exec(select(PartyNotice)).all()
        )


def test_an_unsubscribe_reaches_the_processor_that_mailed_the_person(
    routed_app: FastAPI,
    engine: Engine,
    smtp_server: SMTPSink,
) -> None:
    people = sent_through_processor(routed_app, engine, smtp_server)
    runtime: Runtime = routed_app.state.runtime
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        runtime.self_service.unsubscribe(
            session, person, "weekly", Evidence(ConsentChannel.one_click)
        )
    assert notices(engine) == [("sakura-delivery", people[0].email, "magazine withdrawn (weekly)")]


def test_a_joint_use_withdrawal_reaches_the_companies_that_received_an_export(
    routed_app: FastAPI,
    engine: Engine,
    smtp_server: SMTPSink,
) -> None:
    people = sent_through_processor(routed_app, engine, smtp_server)
    runtime: Runtime = routed_app.state.runtime
    lifecycle = runtime.optin.lifecycle
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[1].id)
        assert person is not None
        lifecycle.grant_confirmed(session, person, ConsentPurpose.joint_use, evidence)
        export_for(session, runtime.registry, "sakura-solutions-jp")
        session.commit()
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[1].id)
        assert person is not None
        lifecycle.withdraw(session, person, ConsentPurpose.joint_use, Evidence(ConsentChannel.link))
        session.commit()
    # the processor only sends mail: a joint-use withdrawal is none of its business
    assert notices(engine) == [("sakura-solutions-jp", people[1].email, "joint_use withdrawn")]


def test_an_erasure_reaches_everyone_and_the_hand_over_clears_and_records_it(
    routed_app: FastAPI,
    engine: Engine,
    smtp_server: SMTPSink,
    tmp_path: Path,
) -> None:
    people = sent_through_processor(routed_app, engine, smtp_server)
    runtime: Runtime = routed_app.state.runtime
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[2].id)
        assert person is not None
        runtime.self_service.erase(session, person, Evidence(ConsentChannel.erasure))
    assert notices(engine) == [("sakura-delivery", people[2].email, "erased")]
    with Session(for_writing(engine)) as session:
        handed = parties.hand_over(session, "sakura-delivery", triggered_by="test")
        session.commit()
    assert [(n["address"], n["change"]) for n in handed] == [(people[2].email, "erased")]
    assert notices(engine) == []
    with Session(engine) as session:
        records = session.exec(
            select(TransferRecord).where(TransferRecord.purpose == "opt-out notification")
        ).all()
        assert [(r.party, r.people) for r in records] == [("sakura-delivery", 1)]


def test_people_no_party_holds_cause_no_notices(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        runtime.self_service.unsubscribe(session, person, "", Evidence(ConsentChannel.link))
    assert notices(engine) == []
