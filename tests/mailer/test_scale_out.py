"""Scale-out: four `mailmag worker` processes share one issue's queue, one is killed with
SIGKILL mid-run, and every recipient is still delivered, with duplicates no more than what
the killed worker had in flight; two `mailmag serve` processes on one database elect one
scheduler leader, which starts a scheduled issue exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailer.capture import free_port
from mailer.clock import utcnow
from mailer.models import Delivery, Issue, IssueStatus
from mailer.worker import WorkerConfig
from subscriptions.runtime import Runtime
from tests.conftest import TEST_SECRET
from tests.mailer.test_crash import MAILMAG, issue_status
from tests.mailer.test_sending import seed
from tests.support.smtp import SMTPSink

RECIPIENTS = 600
BOUND = WorkerConfig().unrecorded_bound  # what a killed worker may have sent unrecorded


def env_for(engine: Engine, smtp_server: SMTPSink) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    return env | {
        "MAILMAG_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "MAILMAG_SECRET_KEY": TEST_SECRET,
        "MAILMAG_SMTP_HOST": smtp_server.host,
        "MAILMAG_SMTP_PORT": str(smtp_server.port),
        "MAILMAG_SMTP_TLS": "none",
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
        "MAILMAG_DELIVERY_LEASE_SECONDS": "2",
    }


def test_four_workers_share_an_issue_and_a_killed_one_loses_nothing(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    issue_id, people = seed(app, engine, RECIPIENTS)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    smtp_server.delay = 0.005
    env = env_for(engine, smtp_server)
    workers = [
        subprocess.Popen(
            [MAILMAG, "worker", "--batch", "50"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < RECIPIENTS // 4:
            assert time.monotonic() < deadline, "the workers sent too little"
            time.sleep(0.01)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        at_kill = len(smtp_server.received)
        deadline = time.monotonic() + 90
        while issue_status(engine, issue_id) is not IssueStatus.sent:
            assert time.monotonic() < deadline, "the issue did not finish"
            time.sleep(0.1)
    finally:
        for process in workers[1:]:
            process.send_signal(signal.SIGTERM)
        for process in workers[1:]:
            process.wait(timeout=30)

    received = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    duplicates = sum(received.values()) - len(received)
    with Session(engine) as session:
        owners = session.exec(
            select(Delivery.lease_owner, func.count()).group_by(col(Delivery.lease_owner))
        ).all()
    print(
        f"\n4 workers, one killed after {at_kill} of {RECIPIENTS} messages: "
        f"{sum(received.values())} received, {len(received)} distinct, {duplicates} duplicates"
    )
    assert set(received) == {p.email for p in people}
    assert duplicates <= BOUND  # at most what the killed worker had sent unrecorded
    assert owners == [(None, RECIPIENTS)]  # every lease given back with its result


def test_two_servers_elect_one_scheduler_which_starts_an_issue_once(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    issue_id, people = seed(app, engine, 40)
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.status = IssueStatus.scheduled
        issue.scheduled_at = utcnow() + timedelta(seconds=3)
        session.add(issue)
        session.commit()
    env = env_for(engine, smtp_server) | {"MAILMAG_LOG_LEVEL": "INFO"}
    servers, logs = [], []
    for n in range(2):
        log = (tmp_path / f"serve{n}.log").open("w")
        logs.append(log)
        port_env = {"MAILMAG_HTTP_PORT": str(free_port()), "MAILMAG_DATA_DIR": str(tmp_path)}
        servers.append(
            subprocess.Popen(
                [MAILMAG, "serve"], cwd=tmp_path, env=env | port_env, stdout=log, stderr=log
            )
        )
    try:
        deadline = time.monotonic() + 60
        while issue_status(engine, issue_id) is not IssueStatus.sent:
            assert time.monotonic() < deadline, "the scheduled issue was not sent"
            assert all(s.poll() is None for s in servers), "a server stopped"
            time.sleep(0.2)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
        for log in logs:
            log.close()
    leaders = 0
    for n in range(2):
        for line in (tmp_path / f"serve{n}.log").read_text().splitlines():
            if line.startswith("{") and json.loads(line)["message"].startswith(
                "this process leads the scheduler"
            ):
                leaders += 1
    assert leaders == 1
    received = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert received == Counter({p.email: 1 for p in people})
