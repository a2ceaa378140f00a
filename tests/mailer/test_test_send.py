"""Test sends as marketing uses them, against a real SMTP server: marked "[TEST]", recorded
in the audit log, never to an address mailmag does not mail, limited per staff member and
per issue, and with links that open a page saying the message was a test."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.verp import TEST_DELIVERY, DeliveryTokens
from subscriptions.app import create_app
from subscriptions.auth import issue_token
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    AuditEvent,
    AuditSubject,
    ConsentChannel,
    ConsentEvent,
    Magazine,
    StaffRole,
    StaffUser,
    Subscriber,
    SuppressionReason,
)
from subscriptions.settings import Settings
from subscriptions.suppression import suppress
from tests.mailer.test_api import create, runtime_of, token_for, weekly_with_readers
from tests.support.pages import local, text_of
from tests.support.smtp import SMTPSink

SKIPPED = "skipped: not sent, this address does not receive mail from us"


@pytest.fixture
def limited(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The app with small test-send limits: 10 per staff member an hour, 15 per issue a day."""
    app = create_app(
        settings.model_copy(
            update={"test_sends_per_staff_hour": 10, "test_sends_per_issue_day": 15}
        ),
        engine=engine,
        delivery=False,
    )
    with TestClient(app) as client:
        yield client


def bearer(engine: Engine, role: StaffRole = StaffRole.marketer, email: str = "") -> dict[str, str]:
    token = token_for(engine, role) if not email else _token_as(engine, email)
    return {"Authorization": f"Bearer {token}"}


def _token_as(engine: Engine, email: str) -> str:
    with Session(for_writing(engine)) as session:
        user = StaffUser(email=email, role=StaffRole.marketer, password_hash="x")
        session.add(user)
        session.flush()
        token = issue_token(session, user, label="test")
        session.commit()
    return token


def send_test(
    client: TestClient, headers: dict[str, str], issue_id: int, *to: str
) -> httpx.Response:
    return client.post(
        f"/api/v1/issues/{issue_id}/test-send", json={"addresses": list(to)}, headers=headers
    )


def test_a_test_send_is_marked_audited_and_its_links_say_it_was_a_test(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    marketer = bearer(engine)
    issue = create(client, marketer, weekly_with_readers(app, engine, 0)).json()
    answer = client.post(
        f"/api/v1/issues/{issue['id']}/test-send",
        json={"addresses": ["QA@Example.com", "boss@example.com", "qa@example.com"]},
        headers=marketer,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"results": {"QA@example.com": "sent", "boss@example.com": "sent"}}
    received = smtp_server.wait_for(2)
    for mail in received:
        message = mail.message()
        assert message["Subject"] == "[TEST] Weekly news"
        assert "[TEST] Weekly news" not in issue["subject"]
    tokens = DeliveryTokens(runtime_of(app).settings.resolved_secret())
    return_path = received[0].mail_from
    assert tokens.read(re.findall(r"bounce\+(\w+)@", return_path)[0]) == TEST_DELIVERY

    with Session(engine) as session:
        [row] = session.exec(select(AuditEvent).where(AuditEvent.action == "issue.test_send"))
        named = set(
            session.exec(select(AuditSubject.subject_digest).where(AuditSubject.audit_id == row.id))
        )
        ledger_before = len(session.exec(select(ConsentEvent)).all())
    assert re.fullmatch(r"staff:\d+ marketer@example.com", row.actor)
    assert row.target == f"issue:{issue['id']}"
    hasher = runtime_of(app).optin.hasher
    assert named == {hasher.digest("qa@example.com"), hasher.digest("boss@example.com")}

    message = received[0].message()
    unsubscribe = re.findall(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))[0]
    text = text_of(message)
    preferences = re.findall(r"https?://\S+/preferences/\S+", text)[0]
    for url in (unsubscribe, preferences):
        page = client.get(local(url))
        assert page.status_code == 200
        assert "This link is from a test message" in page.text
        assert "nothing was changed" in page.text
    one_click = client.post(local(unsubscribe), data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    japanese = client.get(local(unsubscribe) + "?lang=ja")
    assert "テスト" in japanese.text
    with Session(engine) as session:
        assert len(session.exec(select(ConsentEvent)).all()) == ledger_before


def test_a_subject_of_full_length_still_goes_out_as_a_test(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    marketer = bearer(engine)
    longest = "件名" * 150  # the 300 characters a stored subject may have
    issue = create(client, marketer, weekly_with_readers(app, engine, 0), subject=longest).json()
    answer = send_test(client, marketer, issue["id"], "qa@example.com")
    assert answer.status_code == 200, answer.text
    assert smtp_server.wait_for(1)[0].message()["Subject"] == f"[TEST] {longest}"


def test_a_test_send_never_mails_an_address_mailmag_does_not_mail(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """Suppressed (here: complained) or unsubscribed from the issue's magazine: skipped,
    both in the same words, so the answer does not tell a marketer why."""
    marketer = bearer(engine)
    runtime = runtime_of(app)
    weekly = weekly_with_readers(app, engine, 1)  # api0@example.org, confirmed
    with Session(for_writing(engine)) as session:
        suppress(
            session,
            digest=runtime.optin.hasher.digest("complained@example.org"),
            reason=SuppressionReason.complaint,
        )
        person = session.exec(
            select(Subscriber).where(Subscriber.email == "api0@example.org")
        ).one()
        magazine = session.get(Magazine, weekly)
        assert magazine is not None
        evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", None)
        runtime.optin.lifecycle.end(session, person, [magazine], evidence)
        session.commit()
    issue = create(client, marketer, weekly).json()
    answer = send_test(
        client,
        marketer,
        issue["id"],
        "complained@example.org",
        "api0@example.org",
        "colleague@example.com",
    )
    assert answer.json() == {
        "results": {
            "complained@example.org": SKIPPED,
            "api0@example.org": SKIPPED,
            "colleague@example.com": "sent",
        }
    }
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [("colleague@example.com",)]
    with Session(engine) as session:
        [row] = session.exec(select(AuditEvent).where(AuditEvent.action == "issue.test_send"))
    assert row.subjects == 3
    assert '"skipped": 2' in row.detail


def test_test_sends_are_limited_per_staff_member_and_per_issue(
    limited: TestClient, engine: Engine, smtp_server: SMTPSink
) -> None:
    app = limited.app
    assert isinstance(app, FastAPI)
    ann, ben = bearer(engine, email="ann@example.com"), bearer(engine, email="ben@example.com")
    weekly = weekly_with_readers(app, engine, 0)
    first = create(limited, ann, weekly).json()["id"]
    second = create(limited, ann, weekly).json()["id"]
    batch = [f"qa{n}@example.com" for n in range(10)]

    assert send_test(limited, ann, first, *batch).status_code == 200
    refused = send_test(limited, ann, second, "one.more@example.com")
    assert refused.status_code == 429
    assert "per staff member an hour" in refused.json()["detail"]
    assert 3000 < int(refused.headers["retry-after"]) <= 3600

    assert send_test(limited, ben, first, *batch[:5]).status_code == 200
    full = send_test(limited, ben, first, "late@example.com")
    assert full.status_code == 429
    assert "of one issue a day" in full.json()["detail"]
    assert send_test(limited, ben, second, "other@example.com").status_code == 200

    assert len(smtp_server.wait_for(16)) == 16  # nothing went out for the refused calls
    with Session(engine) as session:
        rows = session.exec(
            select(AuditEvent)
            .where(AuditEvent.action == "issue.test_send")
            .order_by(col(AuditEvent.seq))
        ).all()
    assert [r.subjects for r in rows] == [10, 5, 1]
