"""Subscription bombing: one IP trying many addresses, many IPs trying one address. Both are
held to the configured limits, before anything is written, and an address gets at most one
confirmation mail a day however often it is entered.

Bar: accepted sign-ups == the limit; confirmation mails per address per day <= 1."""

from __future__ import annotations

from collections import Counter

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.app import create_app
from subscriptions.models import Subscriber, SystemMail
from subscriptions.settings import Settings
from tests.reliability.conftest import record, size
from tests.subscriptions.test_signup_rules import subscribe


def test_bombing_is_held_to_the_limits(settings: Settings, engine: Engine) -> None:
    per_ip, per_address = 20, 5
    limited = settings.model_copy(
        update={"subscribe_per_ip": per_ip, "subscribe_per_address": per_address}
    )
    app = create_app(limited, engine=engine, delivery=False)
    tries = size(200, 2000)
    with TestClient(app, client=("203.0.113.9", 4000)) as client:
        one_ip = Counter(
            subscribe(client, f"victim{n}@example.org").status_code for n in range(tries)
        )
    many_ips: Counter[int] = Counter()
    for n in range(tries // 4):
        with TestClient(app, client=(f"198.51.{n // 250}.{n % 250}", 4000)) as client:
            many_ips[subscribe(client, "target@example.org").status_code] += 1
    with Session(engine) as session:
        people = len(session.exec(select(Subscriber)).all())
        mails = Counter(m.recipient for m in session.exec(select(SystemMail)).all())
    most_mails = max(mails.values())
    record(
        f"abuse [{engine.dialect.name}]",
        "sign-ups accepted from one IP",
        f"{one_ip[200]} of {tries}",
        f"{per_ip}",
        one_ip[200] == per_ip,
    )
    record(
        f"abuse [{engine.dialect.name}]",
        "sign-ups accepted for one address from many IPs",
        f"{many_ips[200]} of {tries // 4}",
        f"{per_address}",
        many_ips[200] == per_address,
    )
    record(
        f"abuse [{engine.dialect.name}]",
        "confirmation mails to one address in a day",
        most_mails,
        "<= 1",
        most_mails <= 1,
    )
    assert one_ip[200] == per_ip
    assert many_ips[200] == per_address
    assert people == per_ip + 1
    assert most_mails <= 1
