"""The opt-in store end to end over HTTP, with mail captured by a real SMTP server:
subscribe, confirm, preferences, export, one-click unsubscribe, erasure."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.transactions import for_writing
from subscriptions import consent
from subscriptions.consent import Evidence
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentEvent,
    ConsentPurpose,
    Magazine,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscriptions.runtime import Runtime
from subscriptions.subscribing import CheckedSignUp, Client, SignUpRequest, UnsubscribeLink
from subscriptions.tokens import Action
from tests.support.pages import hidden_fields, html_of, link_in, local, page_link, text_of
from tests.support.smtp import SMTPSink

SPAM_NAME = "WIN A PRIZE http://evil.example/"


def subscribe(client: TestClient, email: str, **extra: Any) -> Any:
    form_page = client.get("/subscribe")
    assert form_page.status_code == 200
    data: dict[str, Any] = {
        **hidden_fields(form_page.text),
        "email": email,
        "magazines": ["weekly"],
    }
    data.update(extra)
    return client.post("/subscribe", data=data)


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def events(engine: Engine) -> list[ConsentEvent]:
    with Session(engine) as session:
        return list(session.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq))).all())


def every_subscription(engine: Engine) -> list[tuple[tuple[str, str], str]]:
    """((address, magazine), status) of every subscription, once the ledger verifies."""
    with Session(engine) as session:
        assert consent.verify(session).ok
        rows = session.exec(
            select(Subscriber.email, Magazine.slug, Subscription.status)
            .join(Subscription, col(Subscription.subscriber_id) == Subscriber.id)
            .join(Magazine, col(Magazine.id) == Subscription.magazine_id)
        ).all()
    return [((email, slug), SubscriptionStatus(status).value) for email, slug, status in rows]


def status_of(engine: Engine, email: str) -> SubscriptionStatus | None:
    with Session(engine) as session:
        row = session.exec(
            select(Subscription).join(Subscriber).where(Subscriber.email == email)
        ).first()
    return row.status if row else None


def test_the_form_shows_the_notice_and_no_ticked_consent(client: TestClient) -> None:
    page = client.get("/subscribe")
    assert "Matters to be Indicated When We Collect Personal Information" in page.text
    assert "Sakura America Inc." in page.text
    assert " checked" not in page.text
    assert 'name="joint_use"' in page.text
    assert 'name="foreign_transfer"' in page.text
    assert "required" in page.text
    assert "optional" in page.text


def test_subscribe_confirm_preferences_export_unsubscribe_erase(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    address = "reader@example.org"
    answer = subscribe(client, address, name=SPAM_NAME, company="Example Co", joint_use="yes")
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    assert status_of(engine, address) is SubscriptionStatus.pending

    [received] = smtp_server.wait_for(1)
    mail = received.message()
    assert received.rcpt_tos == (address,)
    assert mail["To"] == address
    assert SPAM_NAME not in received.data.decode("utf-8", "replace")
    assert "Example Co" not in text_of(mail) + html_of(mail)
    confirm_url = link_in(mail, "/confirm/")

    # A scanner following the link changes nothing.
    page = client.get(local(confirm_url))
    assert page.status_code == 200
    assert "Sakura Weekly" in page.text
    assert status_of(engine, address) is SubscriptionStatus.pending

    confirmed = client.post(local(confirm_url))
    assert confirmed.status_code == 200
    assert status_of(engine, address) is SubscriptionStatus.confirmed
    actions = [(e.purpose, e.action) for e in events(engine)]
    assert actions == [
        (ConsentPurpose.magazine, ConsentAction.granted),
        (ConsentPurpose.joint_use, ConsentAction.granted),
        (ConsentPurpose.magazine, ConsentAction.confirmed),
        (ConsentPurpose.joint_use, ConsentAction.confirmed),
    ]
    notice_hash = runtime_of(app).optin.notices.current("en").content_hash
    assert all(e.notice_hash == notice_hash for e in events(engine))

    preferences = page_link(confirmed.text, "/preferences/")
    prefs_page = client.get(preferences)
    assert prefs_page.status_code == 200
    assert address in prefs_page.text
    assert "Example Co" in prefs_page.text

    exported = client.post(preferences.split("?")[0] + "/export")
    assert exported.status_code == 200
    assert exported.headers["content-disposition"].startswith("attachment")
    data = json.loads(exported.text)
    assert data["profile"]["email"] == address
    assert data["profile"]["name"] == SPAM_NAME
    assert [s["status"] for s in data["subscriptions"]] == ["confirmed"]
    assert len(data["consent_events"]) == 4

    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
        unsubscribe_url = runtime_of(app).links.url(Action.unsubscribe, subscriber, "weekly")
    one_click = client.post(
        local(unsubscribe_url),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert status_of(engine, address) is SubscriptionStatus.unsubscribed
    last = events(engine)[-1]
    assert (last.action, last.channel, last.scope) == (
        ConsentAction.withdrawn,
        ConsentChannel.one_click,
        "weekly",
    )

    asked = client.post(preferences.split("?")[0] + "/erase")
    assert asked.status_code == 200
    assert "Check your inbox" in asked.text
    erase_mail = smtp_server.wait_for(2)[1].message()
    erase_url = local(link_in(erase_mail, "/erase/"))
    assert client.get(erase_url).status_code == 200
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).first() is not None  # GET deleted nothing
    erased = client.post(erase_url)
    assert erased.status_code == 200

    digest = runtime_of(app).optin.hasher.digest(address)
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []
        assert session.exec(select(Subscription)).all() == []
        suppression = session.exec(select(Suppression)).one()
        assert suppression.address_digest == digest
        assert suppression.reason is SuppressionReason.erasure
        kept = session.exec(select(ConsentEvent)).all()
        assert kept, "the ledger keeps its rows"
        assert all(e.ip is None and e.user_agent is None and e.personal_erased for e in kept)
        assert all(e.subscriber_id is None and e.subject_digest == digest for e in kept)
        assert consent.verify(session).ok
    # Every link of the erased person is dead.
    assert client.get(preferences).status_code == 400


def test_preferences_change_magazines_profile_and_joint_use(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    subscribe(client, "pat@example.org", joint_use="yes", foreign_transfer="yes")
    mail = smtp_server.wait_for(1)[0].message()
    confirmed = client.post(local(link_in(mail, "/confirm/")))
    preferences = page_link(confirmed.text, "/preferences/").split("?")[0]
    foreign = [c.code for c in runtime_of(app).registry.foreign_countries]
    assert [
        e.scope
        for e in events(engine)
        if e.purpose is ConsentPurpose.foreign_transfer and e.action is ConsentAction.confirmed
    ] == foreign

    saved = client.post(
        preferences,
        data={"magazines": ["events"], "name": "Pat Doe", "joint_use": "yes"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
        assert subscriber.name == "Pat Doe"
        statuses = {s.magazine_id: s.status for s in session.exec(select(Subscription)).all()}
    assert sorted(statuses.values()) == [
        SubscriptionStatus.confirmed,
        SubscriptionStatus.unsubscribed,
    ]
    withdrawn = [
        e.scope
        for e in events(engine)
        if e.purpose is ConsentPurpose.foreign_transfer and e.action is ConsentAction.withdrawn
    ]
    assert withdrawn == foreign
    page = client.get(preferences)
    assert "Your consent history" in page.text


def test_a_link_without_a_scope_ends_every_magazine_at_once(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """The one-click path reads the person and the magazines a link covers in one query:
    a scoped link ends its magazine only, a link without a scope ends them all."""
    address = "both@example.org"
    subscribe(client, address, magazines=["weekly", "events"])
    client.post(local(link_in(smtp_server.wait_for(1)[0].message(), "/confirm/")))
    with Session(engine) as session:
        person = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
    links = runtime_of(app).links

    def one_click(scope: str) -> int:
        answer = client.post(
            local(links.url(Action.unsubscribe, person, scope)),
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return answer.status_code

    def statuses() -> dict[int, SubscriptionStatus]:
        with Session(engine) as session:
            rows = session.exec(
                select(Subscription).where(Subscription.subscriber_id == person.id)
            ).all()
        return {row.magazine_id: row.status for row in rows}

    assert set(statuses().values()) == {SubscriptionStatus.confirmed}
    assert one_click("events") == 200
    assert sorted(s.value for s in statuses().values()) == ["confirmed", "unsubscribed"]
    assert one_click("") == 200
    assert set(statuses().values()) == {SubscriptionStatus.unsubscribed}
    withdrawn = [e.scope for e in events(engine) if e.action is ConsentAction.withdrawn]
    assert sorted(withdrawn) == ["events", "weekly"]  # each magazine withdrawn once
    assert one_click("nosuchmagazine") == 200  # names nothing live: nothing changes
    assert len([e for e in events(engine) if e.action is ConsentAction.withdrawn]) == 2


def test_unsubscribes_run_together_end_each_what_its_own_link_covers(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """A group commit hands many one-clicks to ``unsubscribe_all`` at once: each link ends
    its own person's magazines only, a repeat in the same batch is withdrawn once, a link
    whose person is gone fails alone, and the ledger still verifies."""
    people = {}
    for n, address in enumerate(["ann@example.org", "bob@example.org"]):
        subscribe(client, address, magazines=["weekly", "events"])
        client.post(local(link_in(smtp_server.wait_for(n + 1)[n].message(), "/confirm/")))
        with Session(engine) as session:
            people[address] = session.exec(
                select(Subscriber).where(Subscriber.email == address)
            ).one()
    optin = runtime_of(app).optin
    ann, bob = people["ann@example.org"], people["bob@example.org"]

    def link(person: Subscriber, scope: str) -> UnsubscribeLink:
        return UnsubscribeLink(key=person.token_key, scope=scope)

    evidence = Evidence(ConsentChannel.one_click, "192.0.2.7", "a mail client")
    with for_writing(engine).begin() as conn:
        outcomes = optin.unsubscribe_all(
            conn,
            [
                (link(ann, "weekly"), evidence),
                (link(bob, "events"), evidence),
                (UnsubscribeLink(key="nobody-has-this-key"), evidence),
                (link(ann, "weekly"), evidence),  # the same click twice
                (UnsubscribeLink(delivery_id=987654), evidence),
            ],
        )
    assert [type(o).__name__ for o in outcomes] == [
        "Unsubscribing",
        "Unsubscribing",
        "BadToken",
        "Unsubscribing",
        "BadToken",
    ]
    assert dict(every_subscription(engine)) == {
        ("ann@example.org", "weekly"): "unsubscribed",
        ("ann@example.org", "events"): "confirmed",
        ("bob@example.org", "weekly"): "confirmed",
        ("bob@example.org", "events"): "unsubscribed",
    }
    withdrawn = [
        (e.subscriber_id, e.scope, e.ip)
        for e in events(engine)
        if e.action is ConsentAction.withdrawn
    ]
    assert withdrawn == [(ann.id, "weekly", "192.0.2.7"), (bob.id, "events", "192.0.2.7")]


def test_sign_ups_recorded_together_are_each_refused_or_written_alone(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """A group commit hands many checked sign-ups to ``record_sign_ups`` at once: new
    addresses are written together, a known address takes the general path, and a form sent
    twice, an address twice or a magazine that is not there is refused (or handled) alone."""
    subscribe(client, "known@example.org")  # pending, with its confirmation mail
    optin = runtime_of(app).optin
    notice = optin.notices.current("en").content_hash
    who = Client("192.0.2.8", "a browser")

    def checked(email: str, magazines: list[str], token: str | None = None) -> CheckedSignUp:
        request = SignUpRequest(
            email=email,
            magazines=magazines,
            notice_hash=notice,
            form_token=token or optin.new_form_token(),
        )
        return optin.check_sign_up(request, who, ConsentChannel.api)

    reused = optin.new_form_token()
    batch = [
        checked("new1@example.org", ["weekly", "events"], reused),
        checked("new2@example.org", ["nosuchmagazine"]),
        checked("again@example.org", ["weekly"], reused),  # the same form, sent twice
        checked("known@example.org", ["events"]),
        checked("twice@example.org", ["weekly"]),
        checked("twice@example.org", ["events"]),
    ]
    with for_writing(engine).begin() as conn:
        outcomes = optin.record_sign_ups(conn, batch)
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "InvalidInput",
        "BadToken",
        "NoneType",
        "NoneType",
        "NoneType",
    ]
    assert sorted((e, m, status) for (e, m), status in every_subscription(engine)) == [
        ("known@example.org", "events", "pending"),
        ("known@example.org", "weekly", "pending"),
        ("new1@example.org", "events", "pending"),
        ("new1@example.org", "weekly", "pending"),
        ("twice@example.org", "events", "pending"),
        ("twice@example.org", "weekly", "pending"),
    ]
    granted = sorted((e.scope, e.ip) for e in events(engine) if e.action is ConsentAction.granted)
    assert granted.count(("weekly", "192.0.2.8")) == 2  # new1, twice
    assert granted.count(("events", "192.0.2.8")) == 3  # new1, known, twice
    runtime_of(app).wake_outbox()
    mails = smtp_server.wait_for(3)  # known's from before, new1's and twice's
    assert {r for m in mails for r in m.rcpt_tos} == {
        "known@example.org",
        "new1@example.org",
        "twice@example.org",
    }
