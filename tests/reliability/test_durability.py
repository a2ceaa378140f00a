"""Durability: the web process (``mailmag serve``, a real process) is killed with SIGKILL the
moment it has answered 2xx to a sign-up, a confirmation or a one-click unsubscribe, then
started again. Bar: every acknowledged action is in the store afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.capture import free_port
from subscriptions.models import Subscriber, Subscription, SubscriptionStatus
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.conftest import TEST_SECRET
from tests.reliability.conftest import record, size
from tests.support.smtp import SMTPSink

ROOT = Path(__file__).resolve().parents[2]
# Each round is a sign-up, its confirmation and an unsubscribe: 3 kills. CI makes 51 on each
# database, the soak 1,002 on each.
ROUNDS = size(17, 334)


class Server:
    """``mailmag serve`` against the test's store, started again after every kill."""

    def __init__(self, engine: Engine, smtp_server: SMTPSink, cwd: Path) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
        self.env |= {
            "MAILMAG_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "MAILMAG_SECRET_KEY": TEST_SECRET,
            "MAILMAG_SMTP_HOST": smtp_server.host,
            "MAILMAG_SMTP_PORT": str(smtp_server.port),
            "MAILMAG_SMTP_TLS": "none",
            "MAILMAG_SENDER_ADDRESS": "news@example.com",
            "MAILMAG_HTTP_PORT": str(port),
            "MAILMAG_BASE_URL": self.base,
            "MAILMAG_SUBSCRIBE_PER_IP": "100000",
            "MAILMAG_LOG_LEVEL": "WARNING",
        }
        # One process that has imported mailmag forks each ``mailmag serve`` (see forkserver).
        self.forks = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forkserver"],
            cwd=ROOT,
            env=self.env | {"MAILMAG_DATA_DIR": str(cwd)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid: int | None = None
        self.kills = 0
        self.slowest_start = 0.0

    def start(self) -> None:
        began = time.monotonic()
        assert self.forks.stdin is not None
        assert self.forks.stdout is not None
        self.forks.stdin.write("serve\n")
        self.forks.stdin.flush()
        self.pid = int(self.forks.stdout.readline())
        deadline = began + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    self.slowest_start = max(self.slowest_start, time.monotonic() - began)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise AssertionError("mailmag serve did not become ready")

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        while alive(self.pid):
            time.sleep(0.001)
        self.pid = None
        self.kills += 1

    def acknowledged(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """One request; the moment a 2xx arrives the process dies, then it starts again."""
        answer = httpx.request(method, f"{self.base}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]
        assert 200 <= answer.status_code < 300, answer.text
        self.kill()
        self.start()
        return answer

    def stop(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        self.forks.kill()
        self.forks.communicate()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def server(engine: Engine, smtp_server: SMTPSink, tmp_path: Path) -> Iterator[Server]:
    running = Server(engine, smtp_server, tmp_path)
    running.start()
    yield running
    running.stop()


def status_of(engine: Engine, email: str) -> SubscriptionStatus | None:
    with Session(engine) as session:
        found = session.exec(
            select(Subscription.status).join(Subscriber).where(Subscriber.email == email)
        ).first()
    return None if found is None else SubscriptionStatus(found)


def test_no_acknowledged_action_is_lost_when_the_web_process_dies(
    app: FastAPI, engine: Engine, server: Server
) -> None:
    runtime: Runtime = app.state.runtime
    missing: list[str] = []
    for n in range(ROUNDS):
        email = f"durable{n}@example.org"
        form = httpx.get(f"{server.base}/api/v1/subscribe/form", timeout=5).json()
        server.acknowledged(
            "POST",
            "/api/v1/subscribe",
            json={
                "email": email,
                "magazines": ["weekly"],
                "notice_hash": form["notice_hash"],
                "form_token": form["form_token"],
            },
        )
        if status_of(engine, email) is not SubscriptionStatus.pending:
            missing.append(f"sign-up {email}")
            continue
        with Session(engine) as session:
            person = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
            confirm = runtime.links.token(Action.confirm, person)
            unsubscribe = runtime.links.token(Action.unsubscribe, person, "weekly")
        server.acknowledged("POST", f"/confirm/{confirm}")
        if status_of(engine, email) is not SubscriptionStatus.confirmed:
            missing.append(f"confirmation {email}")
            continue
        server.acknowledged(
            "POST",
            f"/u/{unsubscribe}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status_of(engine, email) is not SubscriptionStatus.unsubscribed:
            missing.append(f"unsubscribe {email}")
    name = f"durability (kill -9 after 2xx) [{engine.dialect.name}]"
    record(
        name,
        "kills right after a 2xx",
        server.kills,
        f">= {3 * ROUNDS}",
        server.kills >= 3 * ROUNDS,
    )
    record(name, "acknowledged actions missing", len(missing), "0", not missing)
    record(name, "slowest start to ready (s)", round(server.slowest_start, 2), "-", True)
    assert missing == []
    assert server.kills == 3 * ROUNDS
