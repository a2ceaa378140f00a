"""The provider feedback webhook: signed, fresh, replay-safe, and acting like inbound mail."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.models import Issue
from subscriptions.app import create_app
from subscriptions.models import Subscriber, Suppression, SuppressionReason, WebhookEvent
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.server import serving
from tests.support.smtp import SMTPSink

SECRET = "webhook-secret-for-tests-0123456789"


@pytest.fixture
def hooked(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(
        settings.model_copy(update={"webhook_secret": SecretStr(SECRET)}),
        engine=engine,
        delivery=False,
    )


@pytest.fixture
def hook_client(hooked: FastAPI) -> Iterator[TestClient]:
    with TestClient(hooked) as client:
        yield client


def signed(
    body: dict[str, Any], *, secret: str = SECRET, skew: int = 0
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()) + skew)
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return raw, {
        "X-Mailmag-Timestamp": stamp,
        "X-Mailmag-Signature": signature,
        "Content-Type": "application/json",
    }


def sent_return_path(hooked: FastAPI, engine: Engine, smtp_server: SMTPSink) -> tuple[str, str]:
    issue_id, _people = seed(hooked, engine, 2)
    runtime: Runtime = hooked.state.runtime
    runtime.start_issue(issue_id)
    asyncio.run(drain(worker_for(hooked, engine, smtp_server)))
    first = smtp_server.received[0]
    return first.rcpt_tos[0], first.mail_from


def test_a_signed_hard_bounce_suppresses_and_a_replay_changes_nothing(
    hook_client: TestClient, hooked: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    address, return_path = sent_return_path(hooked, engine, smtp_server)
    raw, headers = signed(
        {
            "id": "evt-1",
            "type": "hard_bounce",
            "return_path": return_path,
            "detail": "550 5.1.1 user unknown",
        }
    )
    first = hook_client.post("/api/v1/feedback/webhook", content=raw, headers=headers)
    assert first.status_code == 200
    assert first.json()["status"] == "processed"
    replay = hook_client.post("/api/v1/feedback/webhook", content=raw, headers=headers)
    assert replay.json() == {"status": "duplicate", "outcome": "already processed"}
    with Session(engine) as session:
        person = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
        found = session.exec(select(Suppression)).all()
        assert [(s.address_digest, s.reason) for s in found] == [
            (person.address_digest, SuppressionReason.hard_bounce)
        ]
        assert len(session.exec(select(WebhookEvent)).all()) == 1


def test_a_providers_hard_bounce_for_a_spam_block_suppresses_no_one(
    hook_client: TestClient, hooked: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """The provider's label is not the relay's word: a 5.7.1 is read as the block it is."""
    _address, return_path = sent_return_path(hooked, engine, smtp_server)
    raw, headers = signed(
        {
            "id": "evt-spam",
            "type": "hard_bounce",
            "return_path": return_path,
            "detail": "550 5.7.1 Message rejected as spam",
        }
    )
    answer = hook_client.post("/api/v1/feedback/webhook", content=raw, headers=headers)
    assert answer.status_code == 200
    assert answer.json()["outcome"].startswith("blocked (5.7.1)")
    with Session(engine) as session:
        assert session.exec(select(Suppression)).all() == []
        issue = session.exec(select(Issue)).one()
    assert (issue.blocks, issue.hard_bounces) == (1, 0)


@pytest.mark.parametrize("problem", ["bad signature", "stale", "wrong secret", "far future"])
def test_unsigned_forged_or_stale_events_are_refused(
    problem: str, hook_client: TestClient, engine: Engine
) -> None:
    body = {"id": "evt-x", "type": "complaint", "token": "a" * 26}
    raw, headers = signed(
        body,
        skew=-600 if problem == "stale" else 0,
        secret="other" if problem == "wrong secret" else SECRET,
    )
    if problem == "bad signature":
        headers["X-Mailmag-Signature"] = "0" * 64
    if problem == "far future":
        headers["X-Mailmag-Timestamp"] = "9" * 20
    answer = hook_client.post("/api/v1/feedback/webhook", content=raw, headers=headers)
    assert answer.status_code == 401
    with Session(engine) as session:
        assert session.exec(select(WebhookEvent)).all() == []


@pytest.mark.parametrize("stamp", [b"\xb2", b"\xb9\xb3"])
def test_a_timestamp_of_other_digits_is_refused_not_a_500(hooked: FastAPI, stamp: bytes) -> None:
    """Latin-1 "²" and "¹³" (headers are decoded as latin-1) are digits to ``str.isdigit``
    that ``int`` refuses: a 500 before. Sent as raw bytes over real HTTP (the test client
    would re-encode them as UTF-8)."""
    raw, headers = signed({"id": "evt-4", "type": "complaint", "token": "a" * 26})
    sent = {k.encode(): v.encode() for k, v in headers.items()}
    sent[b"X-Mailmag-Timestamp"] = stamp
    with serving(hooked) as base:
        answer = httpx.post(f"{base}/api/v1/feedback/webhook", content=raw, headers=sent)
    assert answer.status_code == 401
    assert answer.json() == {"detail": "stale or missing timestamp"}


def test_malformed_events_are_explained(hook_client: TestClient) -> None:
    raw, headers = signed({"id": "evt-2", "type": "explode"})
    assert (
        hook_client.post("/api/v1/feedback/webhook", content=raw, headers=headers).status_code
        == 422
    )


def test_without_a_secret_the_webhook_is_off(client: TestClient) -> None:
    raw, headers = signed({"id": "evt-3", "type": "complaint"})
    assert client.post("/api/v1/feedback/webhook", content=raw, headers=headers).status_code == 404
