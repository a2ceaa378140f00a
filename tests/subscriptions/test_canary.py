"""The canary test: every field of every subscriber carries a unique canary value; one issue
goes out through a split route over two SMTP processors (real aiosmtpd servers) and a pulling
processor, and joint-use exports are made. Everything each party received is then scanned:
a single canary of a field it may not receive, or of a person who is not its own, fails."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.clock import utcnow
from mailer.models import Issue, IssueStatus
from mailer.transport import SMTPRelay, SMTPTransport
from subscriptions.app import create_app
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.joint_use import export_for
from subscriptions.models import ConsentChannel, ConsentPurpose, Magazine, Subscriber
from subscriptions.notice import record_notice
from subscriptions.registry import EXAMPLE_REGISTRY
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.mailer.test_sending import drain, status_of, worker_for
from tests.subscriptions.test_processor_api import auth, credential
from tests.support.smtp import SMTPSink

FIELDS = ("email", "name", "company", "department", "title", "phone")
DOMAINS = {"sakura-delivery": "a.example", "sakura-asia": "b.example.sg", "tokyo-post": "c.example"}
EXTRA = """
[[processors]]
key = "tokyo-post"
name = "Tokyo Post Mailing K.K."
contract_reference = "TPM-2026-009"
contract_date = 2026-05-01
country = "JP"
purposes = ["newsletter"]
fields = ["email", "name"]
retention_days = 7
next_review = {review}

[processors.smtp]
host = "127.0.0.1"
port = 2525
tls = "none"

[[routes]]
key = "canary-split"
default = "tokyo-post"

[[routes.rules]]
processor = "sakura-delivery"
domains = ["a.example"]

[[routes.rules]]
processor = "sakura-asia"
domains = [".sg"]
"""


def canary(field: str, n: int, processor: str) -> str:
    if field == "email":
        return f"canary{n:03d}@{DOMAINS[processor]}"
    return f"CANARY-{field}-{n:03d}-X"


def canary_app(settings: Settings, engine: Engine, tmp_path: Path) -> FastAPI:
    review = utcnow().date() + timedelta(days=365)
    text = EXAMPLE_REGISTRY.read_text(encoding="utf-8").replace(
        "next_review = 2027-03-31", f"next_review = {review}"
    )
    # sakura-delivery may receive the company too: it must still not get it, as no template
    # uses it.
    text = text.replace(
        'fields = ["email", "name"]\nretention_days = 30',
        'fields = ["email", "name", "company"]\nretention_days = 30',
    )
    registry = tmp_path / "canary-registry.toml"
    registry.write_text(text + EXTRA.format(review=review), encoding="utf-8")
    return create_app(
        settings.model_copy(update={"registry_file": registry}), engine=engine, delivery=False
    )


def seed_canaries(app: FastAPI, engine: Engine) -> tuple[int, dict[int, dict[str, str]]]:
    """Four people per processor, all fields canaries; the even ones agreed to joint use and
    to the transfer to the USA. Returns the issue and each person's canaries by number."""
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    lifecycle = runtime.optin.lifecycle
    people: dict[int, dict[str, str]] = {}
    with Session(for_writing(engine), expire_on_commit=False) as session:
        notice = record_notice(session, runtime.optin.notices.current("en")).content_hash
        evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", notice)
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        n = 0
        for processor in DOMAINS:
            for _ in range(4):
                values = {f: canary(f, n, processor) for f in FIELDS}
                person = Subscriber(
                    email=values["email"],
                    address_digest=runtime.optin.hasher.digest(values["email"]),
                )
                for field, value in values.items():
                    setattr(person, field, value)
                session.add(person)
                session.flush()
                lifecycle.request(session, person, weekly, evidence)
                lifecycle.confirm(session, person, evidence)
                if n % 2 == 0:
                    lifecycle.grant_confirmed(session, person, ConsentPurpose.joint_use, evidence)
                    lifecycle.grant_confirmed(
                        session, person, ConsentPurpose.foreign_transfer, evidence, scope="US"
                    )
                people[n] = values
                n += 1
        issue = Issue(
            magazine_id=weekly.id or 0,
            subject="News for {{ subscriber.name }}",
            html_body="<p>Dear {{ subscriber.name }},</p><p>Our news.</p>",
            route="canary-split",
        )
        session.add(issue)
        session.commit()
        assert issue.id is not None
        return issue.id, people


def leaks(
    received: str, people: dict[int, dict[str, str]], allowed: set[tuple[int, str]]
) -> list[tuple[int, str]]:
    """Every (person, field) canary found in ``received`` that was not allowed there."""
    return [
        (n, field)
        for n, values in people.items()
        for field, value in values.items()
        if (n, field) not in allowed and value in received
    ]


def test_no_party_receives_a_field_or_a_person_it_may_not(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    app = canary_app(settings, engine, tmp_path)
    runtime: Runtime = app.state.runtime
    issue_id, people = seed_canaries(app, engine)
    assert runtime.start_issue(issue_id) == 12
    received: dict[str, str] = {}
    own = {p: {n for n, v in people.items() if v["email"].endswith(d)} for p, d in DOMAINS.items()}

    sinks = {"sakura-delivery": SMTPSink(), "tokyo-post": SMTPSink()}
    operator_relay = SMTPSink()
    for sink in (*sinks.values(), operator_relay):
        sink.start()
    try:
        worker = worker_for(app, engine, operator_relay)
        worker.routes = {
            key: SMTPTransport(SMTPRelay(host=sink.host, port=sink.port))
            for key, sink in sinks.items()
        }
        asyncio.run(drain(worker))
        assert operator_relay.received == []
        for key, sink in sinks.items():
            assert len(sink.received) == 4
            received[key] = "\n".join(
                f"{r.mail_from} {r.rcpt_tos} " + r.data.decode("utf-8", "replace")
                for r in sink.received
            )
    finally:
        for sink in (*sinks.values(), operator_relay):
            sink.stop()

    with TestClient(app) as client:
        token = credential(engine, "sakura-asia")
        answer = client.post("/processor/v1/batches", json={"limit": 50}, headers=auth(token))
        batch = answer.json()["deliveries"]
        assert len(batch) == 4
        received["sakura-asia"] = answer.text + "".join(
            base64.b64decode(d["message"]).decode("utf-8", "replace") for d in batch
        )
        report = [{"token": d["token"], "status": "sent", "code": 250} for d in batch]
        client.post("/processor/v1/outcomes", json={"outcomes": report}, headers=auth(token))
    assert status_of(engine, issue_id) is IssueStatus.sent

    for processor, numbers in own.items():
        allowed = {(n, f) for n in numbers for f in ("email", "name")}
        assert leaks(received[processor], people, allowed) == [], processor

    # Joint users: only their categories, only people who agreed (and to the USA for the USA).
    exports = {
        "sakura-solutions-jp": ("email", "name", "company", "department", "title", "phone"),
        "sakura-america": ("email", "name", "company", "department", "title"),
        "sakura-thailand": (),  # nobody agreed to a transfer to Thailand
    }
    agreed = {n for n in people if n % 2 == 0}
    with Session(for_writing(engine)) as session:
        for company, fields in exports.items():
            export = export_for(session, runtime.registry, company)
            text = export.as_csv() + export.as_json()
            assert leaks(text, people, {(n, f) for n in agreed for f in fields}) == [], company
            if fields:
                assert {row["email"] for row in export.rows} == {people[n]["email"] for n in agreed}
        session.commit()
