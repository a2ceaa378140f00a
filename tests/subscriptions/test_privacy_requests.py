"""Privacy requests through the web: arrival, the mail loop, due dates and reminders, and
completion performing each kind of request, with the person told by mail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions import consent
from subscriptions.audit import Actor
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    AuditEvent,
    ConsentAction,
    ConsentChannel,
    ConsentPurpose,
    PrivacyRequest,
    RequestChannel,
    RequestKind,
    RequestStatus,
    StaffRole,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SystemMail,
)
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.mailer.test_sending import seed
from tests.support.pages import link_in, local
from tests.support.smtp import SMTPSink
from tests.support.staff import add_staff, login

OFFICER = Actor("staff:1 officer@staff.example", "192.0.2.9")


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def ask(
    app: FastAPI, engine: Engine, kind: RequestKind, person: Subscriber, **extra: object
) -> int:
    with Session(for_writing(engine)) as session:
        found = runtime_of(app).desk.receive(
            session,
            kind=kind,
            address=person.email,
            channel=RequestChannel.preferences,
            **extra,  # type: ignore[arg-type]
        )
        session.commit()
        assert found.id is not None
        return found.id


def complete(app: FastAPI, engine: Engine, request_id: int, outcome: str = "done") -> None:
    with Session(for_writing(engine)) as session:
        found = session.get(PrivacyRequest, request_id)
        assert found is not None
        runtime_of(app).desk.complete(session, found, OFFICER, outcome)
        session.commit()


def test_a_staff_entered_erasure_waits_for_the_mail_loop_then_erases(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    _issue, people = seed(app, engine, 2)
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    csrf = login(client, email, seed_)
    entered = client.post(
        "/admin/requests",
        data={"csrf": csrf, "kind": "erasure", "channel": "phone", "address": people[0].email},
        follow_redirects=False,
    )
    assert entered.status_code == 303
    request_path = entered.headers["location"]
    request_id = int(request_path.rsplit("/", 1)[1])
    too_soon = client.post(f"{request_path}/complete", data={"csrf": csrf, "outcome": "x"})
    assert too_soon.status_code == 409  # nobody acts before the person confirms
    mail = smtp_server.wait_for(1)[0]
    assert mail.rcpt_tos == (people[0].email,)
    verify = local(link_in(mail.message(), "/verify/"))
    page = client.get(verify)
    assert page.status_code == 200
    with Session(engine) as session:  # a GET changes nothing
        assert session.get(PrivacyRequest, request_id).status is RequestStatus.awaiting_verification  # type: ignore[union-attr]
    assert client.post(verify).status_code == 200
    done = client.post(
        f"{request_path}/complete",
        data={"csrf": csrf, "outcome": "Your data is deleted."},
        follow_redirects=False,
    )
    assert done.status_code == 303
    with Session(engine) as session:
        assert session.get(Subscriber, people[0].id) is None
        assert session.get(Subscriber, people[1].id) is not None
        found = session.get(PrivacyRequest, request_id)
        assert found is not None
        assert found.status is RequestStatus.completed
        assert found.subscriber_id is None
        assert len(session.exec(select(Suppression)).all()) == 1
        actions = session.exec(select(AuditEvent.action)).all()
        assert "privacy_request.entered" in actions
        assert "privacy_request.completed" in actions
    told = smtp_server.wait_for(2)[1].message()
    assert "erased" in str(told.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]


def test_a_correction_changes_only_the_fields_asked_for(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    request_id = ask(
        app, engine, RequestKind.correction, people[0], correction={"company": "Right K.K."}
    )
    complete(app, engine, request_id)
    with Session(engine) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        assert person.company == "Right K.K."
        assert person.name == "Reader 0"


def test_a_correction_of_an_unknown_field_is_refused(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    with pytest.raises(Exception, match="cannot be corrected"):
        ask(app, engine, RequestKind.correction, people[0], correction={"email": "x@example.org"})


def test_cessation_ends_every_subscription_and_suppresses(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    complete(app, engine, ask(app, engine, RequestKind.cessation, people[0]))
    with Session(engine) as session:
        statuses = session.exec(
            select(Subscription.status).where(Subscription.subscriber_id == people[0].id)
        ).all()
        assert statuses == [SubscriptionStatus.suppressed]
        assert len(session.exec(select(Suppression)).all()) == 1


def test_stopping_provision_withdraws_joint_use(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    runtime = runtime_of(app)
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        runtime.optin.lifecycle.grant_confirmed(
            session, person, ConsentPurpose.joint_use, Evidence(ConsentChannel.link)
        )
        session.commit()
    complete(app, engine, ask(app, engine, RequestKind.stop_provision, people[0]))
    with Session(engine) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        state = runtime.optin.lifecycle.consent_state(session, person)
        assert state[(ConsentPurpose.joint_use, "")] is ConsentAction.withdrawn
        assert consent.verify(session).ok
        statuses = session.exec(select(Subscription.status)).all()
        assert statuses == [SubscriptionStatus.confirmed]  # the magazine goes on


def test_the_disclosure_link_opens_the_bundle_and_a_forged_one_does_not(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    _issue, people = seed(app, engine, 1)
    complete(app, engine, ask(app, engine, RequestKind.disclosure, people[0]), "Here it is.")
    link = local(link_in(smtp_server.wait_for(1)[0].message(), "/disclosure/"))
    assert client.get(link).status_code == 200
    bundle = client.post(link).json()
    assert bundle["profile"]["email"] == people[0].email
    assert bundle["profile"]["company"] == "Secret Co 0"
    assert {"subscriptions", "consent_events", "deliveries", "transfers"} <= set(bundle)
    forged = runtime_of(app).links.signer.make(Action.preferences, people[0].token_key)
    assert client.post(f"/disclosure/{forged}").status_code == 400  # another action's token


def test_the_contact_form_answers_alike_for_known_and_unknown_addresses(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    _issue, people = seed(app, engine, 1)
    answers = [
        client.post("/contact", data={"kind": "disclosure", "address": address}).text
        for address in (people[0].email, "nobody@example.net")
    ]
    assert answers[0] == answers[1]
    assert sorted(m.rcpt_tos[0] for m in smtp_server.wait_for(2)) == [
        "nobody@example.net",
        people[0].email,
    ]
    bad = client.post("/contact", data={"kind": "erasure", "address": "not an address"})
    assert bad.status_code == 422
    assert 'role="alert"' in bad.text  # the form again, saying what is wrong
    limited = [
        client.post("/contact", data={"kind": "complaint", "address": people[0].email}).status_code
        for _ in range(4)
    ]
    assert limited[-1] == 429  # three a day per address


def test_officers_are_reminded_once_a_day_of_due_requests(app: FastAPI, engine: Engine) -> None:
    _issue, people = seed(app, engine, 1)
    add_staff(engine, StaffRole.privacy_officer)
    add_staff(engine, StaffRole.marketer)
    request_id = ask(app, engine, RequestKind.disclosure, people[0])
    desk = runtime_of(app).desk
    with Session(for_writing(engine)) as session:
        assert desk.remind(session) == 0  # due in 14 days: nothing yet
        found = session.get(PrivacyRequest, request_id)
        assert found is not None
        found.due_at = utcnow() + timedelta(days=2)
        session.add(found)
        assert desk.remind(session) == 1
        assert desk.remind(session) == 0  # once a day
        session.commit()
        mails = session.exec(
            select(SystemMail).where(col(SystemMail.kind) == "request_reminder")
        ).all()
    assert [m.recipient for m in mails] == ["privacy_officer@staff.example"]
