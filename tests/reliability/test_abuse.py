"""Subscription bombing: one IP trying many addresses, many IPs trying one address. Both are
held to the configured limits, before anything is written, and an address gets at most one
confirmation mail a day however often it is entered.

Bar: accepted sign-ups == the limit; confirmation mails per address per day <= 1."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.capture import free_port
from subscriptions.app import create_app
from subscriptions.models import Subscriber, SystemMail
from subscriptions.settings import Settings
from tests.reliability.conftest import record, size
from tests.subscriptions.test_cli import children_of, serving
from tests.subscriptions.test_signup_rules import subscribe
from tests.support.smtp import SMTPSink


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


def test_two_web_processes_hold_one_ip_to_one_limit(
    engine: Engine, tmp_path: Path, smtp_server: SMTPSink
) -> None:
    """``mailmag serve`` with MAILMAG_WEB_PROCESSES=2 on the store under test: one IP's
    sign-ups, each on a new connection (so both processes take some), are held to the limit
    once, not once per process."""
    per_ip, tries = 4, 24
    port = free_port()
    env = {
        "MAILMAG_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "MAILMAG_HTTP_PORT": str(port),
        "MAILMAG_WEB_PROCESSES": "2",
        "MAILMAG_SUBSCRIBE_PER_IP": str(per_ip),
        "MAILMAG_SMTP_HOST": smtp_server.host,
        "MAILMAG_SMTP_PORT": str(smtp_server.port),
        "MAILMAG_SMTP_TLS": "none",
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
    }
    base = f"http://127.0.0.1:{port}"
    answers: Counter[int] = Counter()
    with serving(tmp_path, env, ready_within=90) as process:  # two imports on a busy machine
        deadline = time.monotonic() + 20
        while len(children_of(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        for n in range(tries):
            with httpx.Client(timeout=10) as client:  # a new connection each time
                form = client.get(f"{base}/api/v1/subscribe/form").json()
                answer = client.post(
                    f"{base}/api/v1/subscribe",
                    json={
                        "email": f"reader{n}@example.org",
                        "magazines": ["weekly"],
                        "notice_hash": form["notice_hash"],
                        "form_token": form["form_token"],
                    },
                )
                answers[answer.status_code] += 1
    record(
        f"abuse, 2 web processes [{engine.dialect.name}]",
        "sign-ups accepted from one IP",
        f"{answers[202]} of {tries}",
        f"{per_ip}",
        answers[202] == per_ip,
    )
    assert answers == Counter({202: per_ip, 429: tries - per_ip})
