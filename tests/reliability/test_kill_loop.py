"""kill -9 in a loop: the delivery worker (``mailmag worker``, a real process) is killed with
SIGKILL at random moments and restarted, again and again, while one issue goes out.

Bars: no recipient lost; duplicates no more than what the killed workers had in flight
(sent but not yet recorded: up to ``flush_every`` plus the connection pool, per kill); each
restart resumes sending within 10 s (process start included).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from mailer.models import IssueStatus
from mailer.worker import WorkerConfig
from subscriptions.runtime import Runtime
from tests.mailer.test_crash import issue_status, wait_until_sent, worker
from tests.mailer.test_sending import seed
from tests.reliability.conftest import record, size
from tests.support.smtp import SMTPSink

KILLS = size(5, 20)
RECIPIENTS = KILLS * 150
IN_FLIGHT = WorkerConfig().unrecorded_bound  # flush_every + one transaction per connection
RESUME_BAR = 10.0


def test_a_worker_killed_again_and_again_loses_no_one(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    issue_id, people = seed(app, engine, RECIPIENTS)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    smtp_server.delay = 0.005
    chance = random.Random(KILLS)
    resumes: list[float] = []
    kills = 0
    current = worker(engine, smtp_server, tmp_path)
    try:
        while kills < KILLS and issue_status(engine, issue_id) is not IssueStatus.sent:
            # let it send a random while, then kill it mid-stride
            target = len(smtp_server.received) + chance.randint(20, 120)
            deadline = time.monotonic() + 60
            while len(smtp_server.received) < target and time.monotonic() < deadline:
                if issue_status(engine, issue_id) is IssueStatus.sent:
                    break
                time.sleep(0.005)
            current.send_signal(signal.SIGKILL)
            current.wait()
            kills += 1
            before = len(smtp_server.received)
            restarted = time.monotonic()
            current = worker(engine, smtp_server, tmp_path)
            while len(smtp_server.received) == before:
                if issue_status(engine, issue_id) is IssueStatus.sent:
                    break
                assert time.monotonic() - restarted < 60, "the restarted worker never sent"
                time.sleep(0.01)
            else:
                resumes.append(time.monotonic() - restarted)
        wait_until_sent(engine, issue_id, 120)
    finally:
        current.send_signal(signal.SIGTERM)
        current.wait(timeout=30)

    received = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    lost = {p.email for p in people} - set(received)
    duplicates = sum(received.values()) - len(received)
    slowest = max(resumes, default=0.0)
    name = f"kill -9 loop [{engine.dialect.name}]"
    record(name, "kills", kills, str(KILLS), kills == KILLS)
    record(name, "lost", len(lost), "0", not lost)
    record(
        name,
        "duplicates",
        duplicates,
        f"<= {IN_FLIGHT * kills} (in flight)",
        duplicates <= IN_FLIGHT * kills,
    )
    record(name, "slowest resume (s)", round(slowest, 2), f"<= {RESUME_BAR}", slowest <= RESUME_BAR)
    assert kills == KILLS
    assert lost == set()
    assert duplicates <= IN_FLIGHT * kills
    assert slowest <= RESUME_BAR
