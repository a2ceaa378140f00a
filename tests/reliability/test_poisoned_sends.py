"""Poisoned sends, on both databases: one subscriber's name that no header may carry
(``Bob\\r\\nBcc: x@example.net``, written straight into the store, as a tampered or old row
would be), through the processor pull API.

Bars: the poisoned delivery fails alone, with a reason that holds no personal data; everyone
else is handed out exactly once; no message carries the smuggled header.
"""

from __future__ import annotations

import base64
from collections import Counter

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from mailer.models import Delivery, DeliveryStatus
from subscriptions.db import for_writing
from subscriptions.models import Subscriber
from tests.mailer.test_sending import deliveries
from tests.reliability.conftest import record
from tests.subscriptions.test_processor_api import credential, pull, started_pull_issue

POISON = "Bob\r\nBcc: x@example.net"
SMUGGLED = "x@example.net"


def poison(engine: Engine, person: Subscriber) -> None:
    """Write the name past every check, straight into the row."""
    with for_writing(engine).begin() as conn:
        conn.execute(
            text("UPDATE subscriber SET name = :name WHERE id = :id"),
            {"name": POISON, "id": person.id},
        )


def delivery_of(engine: Engine, issue_id: int, person: Subscriber) -> Delivery:
    found = [d for d in deliveries(engine, issue_id) if d.subscriber_id == person.id]
    assert len(found) == 1
    return found[0]


def personal(reply: str | None, person: Subscriber) -> bool:
    """Whether a stored reply shows anything of the person."""
    return any(bit in (reply or "") for bit in ("Bob", SMUGGLED, person.email))


def test_the_pull_api_hands_out_a_poisoned_batch_without_the_poisoned_one(
    routed_app: FastAPI, engine: Engine
) -> None:
    issue_id, people = started_pull_issue(routed_app, engine, 12)
    victim = people[5]
    poison(engine, victim)
    token = credential(engine, "sakura-asia")
    with TestClient(routed_app) as client:
        answer = pull(client, token)
        again = pull(client, token)
    assert answer.status_code == 200, answer.text
    handed = answer.json()["deliveries"] + again.json()["deliveries"]
    given = Counter(d["address"] for d in handed)
    others = {p.email for p in people} - {victim.email}
    poisoned = delivery_of(engine, issue_id, victim)
    name = f"poisoned name, pull API [{engine.dialect.name}]"
    record(name, "answer", answer.status_code, "200", answer.status_code == 200)
    record(name, "handed out once", len(given), str(len(others)), set(given) == others)
    record(
        name,
        "poisoned delivery",
        poisoned.status.value,
        "failed",
        poisoned.status is DeliveryStatus.failed,
    )
    assert set(given) == others
    assert set(given.values()) == {1}
    for item in handed:
        assert b"\r\nBcc:" not in base64.b64decode(item["message"])
    assert poisoned.status is DeliveryStatus.failed
    assert not personal(poisoned.last_reply, victim)
