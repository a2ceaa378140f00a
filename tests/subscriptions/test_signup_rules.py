"""The rules around sign-up: no enumeration, abuse limits, single-use form tokens, links
bound to their action, one mail a day, expiry of unconfirmed sign-ups."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.clock import utcnow
from subscriptions import consent
from subscriptions.app import create_app
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SystemMail,
)
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from subscriptions.tokens import Action
from tests.support.pages import hidden_fields, link_in, local
from tests.support.smtp import SMTPSink


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def form(client: TestClient, email: str, **extra: Any) -> dict[str, Any]:
    page = client.get("/subscribe")
    return {**hidden_fields(page.text), "email": email, "magazines": ["weekly"], **extra}


def subscribe(client: TestClient, email: str, **extra: Any) -> Any:
    return client.post("/subscribe", data=form(client, email, **extra))


def confirm(client: TestClient, smtp_server: SMTPSink, count: int) -> None:
    mail = smtp_server.wait_for(count)[count - 1].message()
    assert client.post(local(link_in(mail, "/confirm/"))).status_code == 200


def queued_mails(engine: Engine) -> list[SystemMail]:
    with Session(engine) as session:
        return list(session.exec(select(SystemMail)).all())


def test_answers_are_identical_for_new_pending_confirmed_and_unsubscribed(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    subscribe(client, "pending@example.org")
    subscribe(client, "confirmed@example.org")
    subscribe(client, "left@example.org")
    messages = smtp_server.wait_for(3)
    for received in messages[1:]:
        client.post(local(link_in(received.message(), "/confirm/")))
    runtime = runtime_of(app)
    with Session(engine) as session:
        left = session.exec(select(Subscriber).where(Subscriber.email == "left@example.org")).one()
        client.post(local(runtime.links.url(Action.unsubscribe, left)))

    answers = []
    for address in (
        "new@example.org",
        "pending@example.org",
        "confirmed@example.org",
        "left@example.org",
    ):
        response = subscribe(client, address)
        answers.append((response.status_code, response.text, sorted(response.headers.keys())))
    assert all(answer == answers[0] for answer in answers), "the answer reveals the state"

    api_answers = []
    for address in ("new2@example.org", "pending@example.org", "confirmed@example.org"):
        token = client.get("/api/v1/subscribe/form").json()
        response = client.post(
            "/api/v1/subscribe",
            json={
                "email": address,
                "magazines": ["weekly"],
                "form_token": token["form_token"],
                "notice_hash": token["notice_hash"],
            },
        )
        api_answers.append((response.status_code, response.text))
    assert api_answers[0][0] == 202
    assert all(answer == api_answers[0] for answer in api_answers)


def test_a_confirmed_subscriber_gets_an_already_subscribed_mail(
    client: TestClient, engine: Engine, smtp_server: SMTPSink
) -> None:
    subscribe(client, "again@example.org")
    confirm(client, smtp_server, 1)
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
        subscriber.notified_at = utcnow() - timedelta(days=2)
        session.add(subscriber)
        session.commit()
    subscribe(client, "again@example.org")
    second = smtp_server.wait_for(2)[1].message()
    assert "already" in str(second["Subject"])
    assert link_in(second, "/preferences/")


def test_at_most_one_confirmation_mail_per_address_per_day(
    client: TestClient, engine: Engine, smtp_server: SMTPSink
) -> None:
    for _ in range(3):
        assert subscribe(client, "flood@example.org").status_code == 200
    assert len(queued_mails(engine)) == 1


def test_the_api_refuses_a_post_without_the_form_token(client: TestClient, engine: Engine) -> None:
    token = client.get("/api/v1/subscribe/form").json()
    body = {
        "email": "bot@example.org",
        "magazines": ["weekly"],
        "notice_hash": token["notice_hash"],
        "form_token": "",
    }
    assert client.post("/api/v1/subscribe", json=body).status_code == 400
    forged = body | {"form_token": token["form_token"][:-4] + "AAAA"}
    assert client.post("/api/v1/subscribe", json=forged).status_code == 400
    missing = {k: v for k, v in body.items() if k != "form_token"}
    assert client.post("/api/v1/subscribe", json=missing).status_code == 422
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_a_form_token_works_once(client: TestClient, engine: Engine) -> None:
    data = form(client, "once@example.org")
    assert client.post("/subscribe", data=data).status_code == 200
    replay = client.post("/subscribe", data=data | {"email": "other@example.org"})
    assert replay.status_code == 400
    assert "already submitted" in replay.text
    with Session(engine) as session:
        assert [s.email for s in session.exec(select(Subscriber)).all()] == ["once@example.org"]


def test_bad_input_is_explained_and_keeps_what_was_typed(
    client: TestClient, engine: Engine
) -> None:
    bad_address = subscribe(client, "not-an-address", name="Keep Me")
    assert bad_address.status_code == 422
    assert 'aria-invalid="true"' in bad_address.text
    assert 'value="Keep Me"' in bad_address.text
    no_magazine = client.post("/subscribe", data=form(client, "a@example.org", magazines=[]))
    assert no_magazine.status_code == 422
    assert "Choose at least one magazine" in no_magazine.text
    foreign_alone = subscribe(client, "b@example.org", foreign_transfer="yes")
    assert foreign_alone.status_code == 422
    unknown = client.post("/subscribe", data=form(client, "c@example.org", magazines=["nope"]))
    assert unknown.status_code == 422
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_a_stale_notice_is_refused(client: TestClient, engine: Engine) -> None:
    data = form(client, "stale@example.org") | {"notice_hash": "0" * 64}
    response = client.post("/subscribe", data=data)
    assert response.status_code == 422
    assert "notice has changed" in response.text


def test_internationalised_addresses_are_accepted(
    client: TestClient, engine: Engine, smtp_server: SMTPSink
) -> None:
    assert subscribe(client, "用户@例子.example").status_code == 200
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("用户@例子.example",)


@pytest.fixture
def strict_app(settings: Settings, engine: Engine) -> FastAPI:
    limited = settings.model_copy(update={"subscribe_per_ip": 3, "subscribe_per_address": 2})
    return create_app(limited, engine=engine)


def test_one_ip_is_held_to_its_limit_before_anything_is_written(
    strict_app: FastAPI, engine: Engine
) -> None:
    with TestClient(strict_app) as client:
        codes = [subscribe(client, f"victim{n}@example.org").status_code for n in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429]
    with Session(engine) as session:
        assert len(session.exec(select(Subscriber)).all()) == 3


def test_one_address_is_held_to_its_limit_from_many_ips(
    strict_app: FastAPI, engine: Engine
) -> None:
    codes = []
    for n in range(4):
        with TestClient(strict_app, client=(f"198.51.100.{n}", 5000)) as client:
            response = subscribe(client, "target@example.org")
            codes.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) > 0
    assert codes == [200, 200, 429, 429]
    assert len(queued_mails(engine)) == 1


def test_links_are_bound_to_their_action(client: TestClient, app: FastAPI, engine: Engine) -> None:
    subscribe(client, "bound@example.org")
    links = runtime_of(app).links
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
    unsubscribe_token = links.token(Action.unsubscribe, subscriber)
    assert client.post(f"/erase/{unsubscribe_token}").status_code == 400
    assert client.get(f"/preferences/{unsubscribe_token}").status_code == 400
    assert client.post(f"/confirm/{unsubscribe_token}").status_code == 400
    preferences_token = links.token(Action.preferences, subscriber)
    assert client.post(f"/u/{preferences_token}").status_code == 400
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).one().email == "bound@example.org"
        assert session.exec(select(Subscription)).one().status is SubscriptionStatus.pending


def test_tokens_are_opaque(client: TestClient, app: FastAPI, engine: Engine) -> None:
    subscribe(client, "opaque@example.org")
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
    url = runtime_of(app).links.url(Action.unsubscribe, subscriber, "weekly")
    assert "opaque" not in url
    assert not re.search(rf"\b{subscriber.id}\b", url.split("/u/")[1].split(".")[0])


def test_one_click_rejects_a_forged_token(client: TestClient) -> None:
    response = client.post(
        "/u/forged.token.here",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400


def test_expired_unconfirmed_signups_are_purged(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    subscribe(client, "late@example.org", name="Late Person", joint_use="yes")
    subscribe(client, "kept@example.org")
    confirm(client, smtp_server, 2)  # the second mail is kept@'s
    with Session(engine) as session:
        for subscription in session.exec(select(Subscription)).all():
            subscription.created_at = utcnow() - timedelta(days=8)
            session.add(subscription)
        session.commit()
        assert runtime_of(app).optin.purge_expired(session) == 1
    with Session(engine) as session:
        assert [s.email for s in session.exec(select(Subscriber)).all()] == ["kept@example.org"]
        expired = session.exec(
            select(ConsentEvent).where(ConsentEvent.channel == ConsentChannel.expiry)
        ).all()
        assert {(e.purpose.value, e.action) for e in expired} == {
            ("magazine", ConsentAction.withdrawn),
            ("joint_use", ConsentAction.withdrawn),
        }
        late_events = session.exec(
            select(ConsentEvent).where(ConsentEvent.subscriber_id.is_(None))  # type: ignore[union-attr]
        ).all()
        assert late_events
        assert all(e.ip is None for e in late_events)
        assert consent.verify(session).ok


def test_settings_path_is_used_for_the_registry(tmp_path: Path, settings: Settings) -> None:
    broken = tmp_path / "registry.toml"
    broken.write_text("policy_url = 1\n", encoding="utf-8")
    from subscriptions.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="MAILMAG_REGISTRY_FILE"):
        create_app(settings.model_copy(update={"registry_file": broken}))


def test_maintenance_purges_old_nonces_and_sent_mail_but_not_queued_mail(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    from subscriptions import maintenance
    from subscriptions.models import FormNonce, SystemMailStatus

    subscribe(client, "a@example.org")
    subscribe(client, "b@example.org")
    smtp_server.wait_for(2)
    deadline = time.monotonic() + 10
    while True:  # the outbox records a mail sent only after the relay's reply: wait for both
        with Session(engine) as session:
            statuses = [m.status for m in session.exec(select(SystemMail)).all()]
        if statuses == [SystemMailStatus.sent] * 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    old = utcnow() - timedelta(days=30)
    with Session(for_writing(engine)) as session:
        mails = session.exec(select(SystemMail)).all()
        for mail in mails:
            mail.created_at = old
            session.add(mail)
        mails[1].status = SystemMailStatus.queued  # still to be sent: must stay
        mails[1].next_attempt_at = utcnow() + timedelta(days=1)  # (and the outbox waits)
        for nonce in session.exec(select(FormNonce)).all():
            nonce.used_at = old
            session.add(nonce)
        session.commit()
    purged = maintenance.run_once(engine, runtime_of(app).optin, timedelta(hours=2))
    assert (purged.form_nonces, purged.system_mails) == (2, 1)
    with Session(engine) as session:
        assert [m.status for m in session.exec(select(SystemMail)).all()] == [
            SystemMailStatus.queued
        ]


def test_an_empty_sign_up_form_shows_every_error_at_once_beside_its_field(
    client: TestClient,
) -> None:
    page = client.get("/subscribe?lang=ja")
    answer = client.post(
        "/subscribe?lang=ja",
        data={**hidden_fields(page.text), "email": "", "name": "山田 太郎", "locale": "ja"},
    )
    assert answer.status_code == 422
    text = answer.text
    assert 'id="email-error"' in text
    assert 'id="magazines-error"' in text
    assert "メールマガジンを1つ以上選択してください。" in text  # in the page's language
    assert 'aria-invalid="true"' in text
    assert "山田 太郎" in text  # what was typed is kept


def test_a_field_the_registry_requires_is_required_by_the_server_too(
    app: FastAPI, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from subscriptions.registry import EXAMPLE_REGISTRY

    registry = tmp_path / "registry.toml"
    registry.write_text(
        EXAMPLE_REGISTRY.read_text(encoding="utf-8").replace(
            'required = ["email"]', 'required = ["email", "company"]'
        ),
        encoding="utf-8",
    )
    strict = create_app(settings.model_copy(update={"registry_file": registry}), engine=engine)
    with TestClient(strict) as client:
        answer = client.post("/subscribe", data=form(client, "a@example.org"))
        assert answer.status_code == 422
        assert "This field is required." in answer.text
        assert subscribe(client, "a@example.org", company="Example KK").status_code == 200
