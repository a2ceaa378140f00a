"""One subscriber per mailbox: ``ALICE@``, ``Alice@`` and ``aLice@`` are the known ``alice@``
on every path (matched through the unique index on the address digest, on both databases),
the spelling first given is the one mailed, and a database holding such twins from before
is merged by its migration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from subscriptions import schema
from subscriptions.addresses import AddressHasher
from subscriptions.audit import Actor
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.importing import Importer
from subscriptions.models import (
    ConsentChannel,
    Magazine,
    StaffRole,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SystemMail,
)
from subscriptions.runtime import Runtime
from subscriptions.subscribing import Client, SignUpRequest
from tests.support.pages import hidden_fields, link_in, local
from tests.support.smtp import SMTPSink
from tests.support.staff import add_staff, login

SPELLINGS = ("ALICE@example.org", "Alice@Example.ORG", "aLice@example.org")


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def people(engine: Engine) -> list[Subscriber]:
    with Session(engine) as session:
        return list(session.exec(select(Subscriber).order_by(col(Subscriber.id))).all())


def mails(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [m.kind for m in session.exec(select(SystemMail).order_by(col(SystemMail.id)))]


def sign_up(client: TestClient, email: str, magazine: str = "weekly") -> None:
    page = client.get("/subscribe")
    data = {**hidden_fields(page.text), "email": email, "magazines": [magazine]}
    assert client.post("/subscribe", data=data).status_code == 200


def api_sign_up(client: TestClient, email: str) -> None:
    form = client.get("/api/v1/subscribe/form").json()
    answer = client.post(
        "/api/v1/subscribe",
        json={
            "email": email,
            "magazines": ["weekly"],
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
    )
    assert answer.status_code == 202


def test_the_digest_names_the_mailbox_whatever_its_spelling() -> None:
    hasher = AddressHasher(b"k" * 32)
    known = hasher.digest("alice@example.org")
    assert {hasher.digest(spelling) for spelling in SPELLINGS} == {known}
    assert hasher.digest("  alice@EXAMPLE.org ") == known
    # A domain in its ASCII (punycode) form is the same mailbox as in Unicode.
    assert hasher.digest("taro@XN--WGV71A.JP") == hasher.digest("taro@日本.jp")


@pytest.mark.parametrize("path", ["form", "api"])
def test_other_spellings_of_a_confirmed_address_are_that_subscriber(
    client: TestClient, engine: Engine, smtp_server: SMTPSink, path: str
) -> None:
    sign_up(client, "alice@example.org")
    confirmation = smtp_server.wait_for(1)[0]
    assert client.post(local(link_in(confirmation.message(), "/confirm/"))).status_code == 200
    for spelling in SPELLINGS:
        if path == "form":
            sign_up(client, spelling)
        else:
            api_sign_up(client, spelling)
    (alice,) = people(engine)
    assert alice.email == "alice@example.org"  # the spelling given first is the one mailed
    # The only mail is the first confirmation: "already subscribed" waits a notify interval.
    assert mails(engine) == ["confirm"]


def test_a_new_spelling_of_a_pending_address_asks_for_the_same_person(
    client: TestClient, engine: Engine
) -> None:
    sign_up(client, "Bob.Smith@example.org")
    sign_up(client, "bob.smith@example.org", magazine="events")
    (bob,) = people(engine)
    assert bob.email == "Bob.Smith@example.org"
    with Session(engine) as session:
        asked = session.exec(select(Subscription).where(Subscription.subscriber_id == bob.id))
        assert {s.status for s in asked} == {SubscriptionStatus.pending}
    assert mails(engine) == ["confirm"]


def test_spellings_in_one_group_commit_make_one_subscriber(app: FastAPI, engine: Engine) -> None:
    runtime_of(app).sync_magazines()
    optin = runtime_of(app).optin
    notice = optin.notices.current("en").content_hash
    batch = [
        optin.check_sign_up(
            SignUpRequest(
                email=email,
                magazines=["weekly"],
                notice_hash=notice,
                form_token=optin.new_form_token(),
            ),
            Client("192.0.2.8", "a browser"),
            ConsentChannel.api,
        )
        for email in ("carol@example.org", "CAROL@example.org")
    ]
    with for_writing(engine).begin() as conn:
        assert optin.record_sign_ups(conn, batch) == [None, None]
    assert [p.email for p in people(engine)] == ["carol@example.org"]


def test_the_store_refuses_a_second_row_for_a_mailbox(app: FastAPI, engine: Engine) -> None:
    hasher = runtime_of(app).optin.hasher
    with Session(engine) as session:
        session.add(Subscriber(email="dan@example.org", address_digest=hasher.digest("dan@x")))
        session.commit()
        session.add(Subscriber(email="DAN@example.org", address_digest=hasher.digest("dan@x")))
        with pytest.raises(IntegrityError):
            session.commit()


def test_an_import_matches_any_spelling_and_suppression_survives_erasure(
    app: FastAPI, engine: Engine, tmp_path: Path, client: TestClient
) -> None:
    runtime = runtime_of(app)
    runtime.sync_magazines()
    sign_up(client, "erin@example.org")
    (erin,) = people(engine)
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, erin.id)
        assert person is not None
        runtime.self_service.erase(session, person, Evidence(ConsentChannel.erasure))
    path = tmp_path / "list.csv"
    path.write_text("email\nERIN@Example.org\nFrank@example.org\nFRANK@example.org\n")
    report = Importer(runtime.engine, runtime.optin).run(
        path, magazine="weekly", actor=Actor("cli:test", "terminal")
    )
    assert dict(report.problems) == {
        2: "the address is suppressed or erased: not imported",
        4: "the address appears earlier in the file",
    }
    assert [p.email for p in people(engine)] == ["Frank@example.org"]


def test_the_privacy_officer_finds_an_address_whatever_its_case(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    sign_up(client, "Grace.Hopper@Example.org")
    email, seed = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed)
    found = client.get("/admin/subscribers", params={"q": "grace.hopper"})
    assert found.status_code == 200
    assert "Grace.Hopper@example.org" in found.text


# --- the migration ------------------------------------------------------------------------------


@pytest.fixture
def before_merge(engine: Engine) -> Iterator[Engine]:
    """The store as it was before one subscriber per mailbox (the revision before the one
    that merges); back at head afterwards whatever the test did."""
    config = schema.alembic_config()
    (merge,) = [
        script
        for script in ScriptDirectory.from_config(config).walk_revisions()
        if script.path.endswith("_one_subscriber_per_mailbox.py")
    ]
    before = merge.down_revision
    assert isinstance(before, str)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, before)
    try:
        yield engine
    finally:
        schema.upgrade(engine)


def _row(conn: Connection, table: str, **values: Any) -> int:
    columns = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    found = conn.execute(
        text(f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"),
        values,
    ).scalar_one()
    return int(found)


def test_the_migration_merges_twins_into_the_first_known(
    app: FastAPI, before_merge: Engine
) -> None:
    engine = before_merge
    runtime = runtime_of(app)
    runtime.sync_magazines()
    digest = runtime.optin.hasher.digest("alice@example.org")
    then = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        magazines: dict[str, int] = dict(conn.execute(text("SELECT slug, id FROM magazine")).all())
        person: dict[str, Any] = {
            "address_digest": digest,
            "locale": "en",
            "bounce_score": 0,
            "created_at": then,
            "updated_at": then,
        }
        first = _row(conn, "subscriber", email="alice@example.org", token_key="k1", **person)
        twin = _row(
            conn,
            "subscriber",
            email="ALICE@example.org",
            token_key="k2",
            name="Alice",
            notified_at=then + timedelta(days=3),
            **person,
        )
        unrelated = _row(
            conn,
            "subscriber",
            email="zoe@example.org",
            token_key="k3",
            **{**person, "address_digest": runtime.optin.hasher.digest("zoe@example.org")},
        )

        def subscribed(who: int, slug: str, status: str, days: int) -> None:
            _row(
                conn,
                "subscription",
                subscriber_id=who,
                magazine_id=magazines[slug],
                status=status,
                created_at=then + timedelta(days=days),
            )

        subscribed(first, "weekly", "confirmed", 0)
        subscribed(twin, "weekly", "pending", 5)  # a mere request: the confirmed one stays
        subscribed(first, "events", "unsubscribed", 1)
        subscribed(twin, "events", "confirmed", 4)  # opted in again later: this one stays
        issue = _row(
            conn,
            "issue",
            magazine_id=magazines["weekly"],
            subject="s",
            preheader="",
            html_body="b",
            locale="en",
            status="sent",
            created_at=then,
            updated_at=then,
        )
        delivery = {"issue_id": issue, "status": "sent", "attempts": 1, "fence": 0}
        both_first = _row(conn, "delivery", subscriber_id=first, next_attempt_at=then, **delivery)
        both_twin = _row(conn, "delivery", subscriber_id=twin, next_attempt_at=then, **delivery)
    schema.upgrade(engine)

    with Session(engine) as session:
        kept = session.exec(select(Subscriber).order_by(col(Subscriber.id))).all()
        assert [(p.id, p.email) for p in kept] == [
            (first, "alice@example.org"),
            (unrelated, "zoe@example.org"),
        ]
        assert kept[0].name == "Alice"  # an empty field filled from the twin
        assert kept[0].notified_at == (then + timedelta(days=3)).replace(tzinfo=UTC)
        statuses = dict(
            session.exec(
                select(Magazine.slug, Subscription.status)
                .join(Subscription, col(Subscription.magazine_id) == Magazine.id)
                .where(Subscription.subscriber_id == first)
            ).all()
        )
        assert statuses == {"weekly": "confirmed", "events": "confirmed"}
        owners = dict(
            session.execute(
                text("SELECT id, subscriber_id FROM delivery WHERE issue_id = :i"), {"i": issue}
            ).all()
        )
        assert owners == {both_first: first, both_twin: None}
    assert schema.revision_state(engine).at_head
