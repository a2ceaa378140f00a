"""Forged and mutated tokens: none is accepted, a token for one action never works for
another, a message's delivery token (which processors and relays hold) opens nothing past
unsubscribing and the offer of a fresh preferences link, and GET never changes state.

Bar: 0 accepted out of 100,000 mutations (1,000,000 in the soak)."""

from __future__ import annotations

import random
import string

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailer.models import Delivery
from mailer.sending import start_issue
from subscriptions.access import TABLE
from subscriptions.errors import BadToken
from subscriptions.models import (
    ConsentAction,
    ConsentEvent,
    ConsentPurpose,
    Subscriber,
    Subscription,
)
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.mailer.test_sending import seed
from tests.reliability.conftest import record, size

ALPHABET = string.ascii_letters + string.digits + "-_.="


def mutations(token: str, rng: random.Random) -> str:
    """One random mutation: flip, insert, delete, truncate or swap characters."""
    chars = list(token)
    kind = rng.randrange(5)
    at = rng.randrange(len(chars))
    if kind == 0:
        chars[at] = rng.choice(ALPHABET.replace(chars[at], ""))
    elif kind == 1:
        chars.insert(at, rng.choice(ALPHABET))
    elif kind == 2:
        del chars[at]
    elif kind == 3:
        chars = chars[: rng.randrange(len(chars))]
    else:
        other = rng.randrange(len(chars))
        chars[at], chars[other] = chars[other], chars[at]
    mutated = "".join(chars)
    return mutated if mutated != token else mutated + "x"


def test_no_forged_or_mutated_token_is_accepted(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    _, [person] = seed(app, engine, 1)
    rng = random.Random(20261128)
    links = runtime.links
    genuine = {
        action: links.token(action, person, "weekly") for action in Action if action != Action.form
    }
    delivery = runtime.delivery_tokens.make(12345)
    total = size(100_000, 1_000_000)
    accepted = 0
    for n in range(total):
        action = list(genuine)[n % len(genuine)]
        if n % 5 == 4:  # a fifth of the tries: delivery tokens, whose letter case is free
            forged = mutations(delivery, rng)
            if forged.lower() == delivery and not forged.islower():
                forged = forged.lower() + "x"  # a case change names the same delivery
            if runtime.delivery_tokens.read(forged) is not None:
                accepted += 1
            continue
        forged = mutations(genuine[action], rng)
        try:
            links.read(action, forged)
        except BadToken:
            continue
        accepted += 1
    crossed = 0
    for action, token in genuine.items():
        for other in genuine:
            if other is action:
                continue
            try:
                links.read(other, token)
                crossed += 1
            except BadToken:
                pass
    record(
        f"forged tokens [{engine.dialect.name}]",
        "accepted",
        f"{accepted} of {total}",
        "0",
        accepted == 0,
    )
    record(
        f"forged tokens [{engine.dialect.name}]",
        "tokens working for another action",
        crossed,
        "0",
        crossed == 0,
    )
    assert accepted == 0
    assert crossed == 0


def test_get_never_changes_state(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    carried, _company = _delivery_token(app, engine)
    with Session(engine) as session:
        person = session.exec(select(Subscriber)).one()
    paths = [
        "/u/" + carried,
        "/preferences/" + carried,
        "/u/" + runtime.links.token(Action.unsubscribe, person, "weekly"),
        "/preferences/" + runtime.links.token(Action.preferences, person),
        "/erase/" + runtime.links.token(Action.erase, person),
        "/confirm/" + runtime.links.token(Action.confirm, person),
    ]

    def state() -> tuple[int, list[str]]:
        with Session(engine) as session:
            events = session.exec(select(func.count()).select_from(ConsentEvent)).one()
            statuses = [s.status.value for s in session.exec(select(Subscription)).all()]
        return int(events), statuses

    before = state()
    with TestClient(app) as client:
        for path in paths:
            for _ in range(3):
                assert client.get(path).status_code < 500
    after = state()
    record(
        f"GET is safe [{engine.dialect.name}]",
        "state changes after GETs of every link",
        int(before != after),
        "0",
        before == after,
    )
    assert before == after


def _delivery_token(app: FastAPI, engine: Engine) -> tuple[str, str]:
    """The delivery token of a queued message of a fresh issue, and the recipient's company."""
    runtime: Runtime = app.state.runtime
    issue_id, [person] = seed(app, engine, 1)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    with Session(engine) as session:
        delivery = session.exec(select(Delivery).where(Delivery.issue_id == issue_id)).one()
    return runtime.delivery_tokens.make(delivery.id or 0), str(person.company)


def test_a_messages_token_opens_nothing_past_unsubscribing(app: FastAPI, engine: Engine) -> None:
    """Every link route of the access table, called with what a message carries and a body
    that asks for the most (every consent, a new profile, a disclosure): it may unsubscribe
    and offer to mail a fresh link; nothing else answers, shows the person or grants."""
    carried, company = _delivery_token(app, engine)
    may = {"GET /u/{token}", "POST /u/{token}", "GET /preferences/{token}"}
    may.add("POST /preferences/{token}/link")
    body = {
        "magazines": "weekly",
        "company": "Taken Over K.K.",
        "joint_use": "yes",
        "foreign_transfer": "yes",
        "kind": "disclosure",
    }
    links = sorted(
        (key for key in TABLE if "{token}" in key),
        key=lambda key: key == "POST /u/{token}",  # unsubscribing last
    )
    opened, showing = [], []
    with TestClient(app) as client:
        for key in links:
            method, template = key.split(" ", 1)
            answer = client.request(
                method, template.replace("{token}", carried), data=body, follow_redirects=False
            )
            if answer.status_code != 400 and key not in may:
                opened.append(f"{key}: {answer.status_code}")
            if company in answer.text or "Taken Over" in answer.text:
                showing.append(key)
    with Session(engine) as session:
        granted = session.exec(
            select(func.count())
            .select_from(ConsentEvent)
            .where(
                col(ConsentEvent.purpose).in_(
                    [ConsentPurpose.joint_use, ConsentPurpose.foreign_transfer]
                )
            )
            .where(ConsentEvent.action == ConsentAction.granted)
        ).one()
    name = f"a message's token [{engine.dialect.name}]"
    record(name, "link routes opened past unsubscribe and the offer", len(opened), "0", not opened)
    record(name, "answers showing the person's data", len(showing), "0", not showing)
    record(name, "consents granted through it", int(granted), "0", granted == 0)
    assert opened == []
    assert showing == []
    assert granted == 0
