"""The event loop under hostile requests: nothing a visitor sends may hold a database lock
across an ``await``, and nothing on the loop may wait for one.

Each test serves the whole app (web, worker and scheduler) over real HTTP and, while an
attack runs, polls ``/healthz`` and watches an issue scheduled a few seconds ahead: the
probe must answer within a second throughout and the issue must still go out. Before the
fix, one invalid sign-up form held SQLite's write lock for the whole answer delay, and
APScheduler's job store, waiting for that lock on the loop's own thread, froze the server
and stopped the scheduler for good.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.capture import free_port
from mailer.clock import utcnow
from mailer.models import Issue, IssueStatus
from subscriptions.app import create_app
from subscriptions.db import for_writing
from subscriptions.settings import Settings
from subscriptions.tokens import Action
from tests.mailer.test_crash import issue_status
from tests.mailer.test_sending import seed
from tests.reliability.conftest import record
from tests.support.server import serving
from tests.support.smtp import SMTPSink

HEALTHZ_BAR = 1.0  # seconds: the slowest probe answer allowed during an attack
ATTACK_SECONDS = 8.0


def _schedule(engine: Engine, issue_id: int, seconds: float) -> None:
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.status = IssueStatus.scheduled
        issue.scheduled_at = utcnow() + timedelta(seconds=seconds)
        session.add(issue)
        session.commit()


@contextmanager
def _site(settings: Settings, engine: Engine, **update: object) -> Iterator[tuple[str, FastAPI]]:
    port = free_port()
    live = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}", **update})
    app = create_app(live, engine=engine)
    with serving(app, port) as base:
        yield base, app


class _Probe:
    """Polls ``/healthz`` ten times a second in a thread; keeps the slowest answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.base}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.failures += not ok
                self._stop.wait(0.1)

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


def _repeat(attack: Callable[[], object], per_second: float, seconds: float) -> int:
    """Run ``attack`` ``per_second`` times a second for ``seconds``, each in a thread."""
    threads = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(1 / per_second)
    for thread in threads:
        thread.join(timeout=60)
    return len(threads)


def _sent_within(engine: Engine, issue_id: int, seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if issue_status(engine, issue_id) is IssueStatus.sent:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def _judge(name: str, probe: _Probe, sent_after: float | None) -> None:
    healthy = probe.slowest <= HEALTHZ_BAR and probe.failures == 0
    record(name, "slowest /healthz", round(probe.slowest, 3), f"<= {HEALTHZ_BAR} s", healthy)
    record(name, "scheduled issue sent", sent_after is not None, "yes", sent_after is not None)
    assert healthy, f"/healthz took {probe.slowest:.2f} s ({probe.failures} failures)"
    assert sent_after is not None, "the scheduled issue was not sent: the scheduler stopped"


@pytest.mark.slow
def test_invalid_sign_up_forms_freeze_neither_the_server_nor_the_scheduler(
    settings: Settings, engine: Engine, smtp_server: SMTPSink
) -> None:
    with _site(settings, engine, signup_answer_ms=2000) as (base, app):
        issue_id, _people = seed(app, engine, 3)
        _schedule(engine, issue_id, 3)

        def invalid_form() -> None:  # no address, no magazine: a 422, held for 2 s
            with httpx.Client(timeout=60) as client:
                client.post(f"{base}/subscribe", data={"name": "x"})

        with _Probe(base) as probe:
            _repeat(invalid_form, per_second=10, seconds=ATTACK_SECONDS)
            sent_after = _sent_within(engine, issue_id, 30)
    _judge(f"invalid sign-up forms [{engine.dialect.name}]", probe, sent_after)


@pytest.mark.slow
def test_a_slow_preferences_body_holds_no_lock(
    settings: Settings, engine: Engine, smtp_server: SMTPSink
) -> None:
    with _site(settings, engine) as (base, app):
        issue_id, people = seed(app, engine, 3)
        runtime = app.state.runtime
        link = urlsplit(runtime.links.url(Action.preferences, people[0]))
        unsubscribe = runtime.links.url(Action.unsubscribe, people[1])
        _schedule(engine, issue_id, 3)
        host, port = urlsplit(base).hostname or "", urlsplit(base).port or 80
        body = b"name=" + b"a" * 40

        def slow_body() -> None:  # the whole head, then the body a byte at a time
            with socket.create_connection((host, port), timeout=60) as raw:
                raw.sendall(
                    f"POST {link.path}?{link.query} HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                for byte in body:
                    raw.sendall(bytes([byte]))
                    time.sleep(ATTACK_SECONDS / len(body))

        slowest_write = 0.0
        with _Probe(base) as probe:
            attacker = threading.Thread(target=slow_body, daemon=True)
            attacker.start()
            time.sleep(0.5)  # the slow request is under way
            with httpx.Client(timeout=60) as client:
                started = time.perf_counter()
                answer = client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
                slowest_write = time.perf_counter() - started
            attacker.join(timeout=60)
            sent_after = _sent_within(engine, issue_id, 30)
    name = f"slow preferences body [{engine.dialect.name}]"
    ok = answer.status_code == 200 and slowest_write <= HEALTHZ_BAR
    record(name, "a one-click beside it", round(slowest_write, 3), "<= 1 s", ok)
    assert answer.status_code == 200
    assert slowest_write <= HEALTHZ_BAR, f"a writer waited {slowest_write:.2f} s"
    _judge(name, probe, sent_after)
