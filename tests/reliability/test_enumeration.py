"""Enumeration: the sign-up answer is the same for a new, pending, confirmed or unsubscribed
address, in content and in time.

Bar: identical answers; median times differ by less than 5 ms (1,000 samples per state in
the soak, 100 in CI)."""

from __future__ import annotations

import statistics
import time

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.app import create_app
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import ConsentChannel, Magazine, Subscriber
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.reliability.conftest import record, size

STATES = ("new", "pending", "confirmed", "unsubscribed")


def test_sign_up_answers_do_not_tell_the_state_of_an_address(
    settings: Settings, engine: Engine
) -> None:
    samples = size(100, 1000)
    app = create_app(
        settings.model_copy(update={"subscribe_per_ip": 10**9, "subscribe_per_address": 10**9}),
        engine=engine,
        delivery=False,
    )
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    lifecycle = runtime.optin.lifecycle
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    with Session(for_writing(engine)) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        for state in STATES[1:]:
            for n in range(samples):
                email = f"{state}{n}@example.org"
                person = Subscriber(email=email, address_digest=runtime.optin.hasher.digest(email))
                session.add(person)
                session.flush()
                lifecycle.request(session, person, weekly, evidence)
                if state != "pending":
                    lifecycle.confirm(session, person, evidence)
                if state == "unsubscribed":
                    lifecycle.end(session, person, [weekly], evidence)
        session.commit()

    times: dict[str, list[float]] = {state: [] for state in STATES}
    answers: dict[str, set[tuple[int, str]]] = {state: set() for state in STATES}
    with TestClient(app) as client:
        form = client.get("/api/v1/subscribe/form").json()
        for n in range(samples):
            for state in STATES:  # interleaved, so drift hits every state alike
                token = runtime.optin.new_form_token()
                body = {
                    "email": f"{state}{n}@example.org",
                    "magazines": ["weekly"],
                    "notice_hash": form["notice_hash"],
                    "form_token": token,
                }
                started = time.perf_counter()
                answer = client.post("/api/v1/subscribe", json=body)
                times[state].append(time.perf_counter() - started)
                answers[state].add((answer.status_code, answer.text))
    medians = {state: statistics.median(values) * 1000 for state, values in times.items()}
    spread = max(medians.values()) - min(medians.values())
    distinct = len(set().union(*answers.values()))
    record(
        f"enumeration [{engine.dialect.name}]",
        "distinct sign-up answers over 4 states",
        distinct,
        "1",
        distinct == 1,
    )
    record(
        f"enumeration [{engine.dialect.name}]",
        "spread of median answer times (ms)",
        f"{spread:.2f} ({', '.join(f'{s} {m:.2f}' for s, m in medians.items())})",
        "< 5 ms",
        spread < 5,
    )
    assert distinct == 1
    assert spread < 5
