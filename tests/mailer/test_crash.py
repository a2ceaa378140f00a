"""A delivery worker killed with SIGKILL mid-issue and restarted delivers to everyone;
duplicates are no more than what it had sent but not yet recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.models import Issue, IssueStatus
from mailer.worker import WorkerConfig
from subscriptions.runtime import Runtime
from tests.conftest import TEST_SECRET
from tests.mailer.test_sending import seed
from tests.support.smtp import SMTPSink

MAILMAG = str(Path(sys.executable).parent / "mailmag")
RECIPIENTS = 300


def worker(
    engine: Engine, smtp_server: SMTPSink, tmp_path: Path, batch: int = 100
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    env |= {
        "MAILMAG_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "MAILMAG_SECRET_KEY": TEST_SECRET,
        "MAILMAG_SMTP_HOST": smtp_server.host,
        "MAILMAG_SMTP_PORT": str(smtp_server.port),
        "MAILMAG_SMTP_TLS": "none",
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
        "MAILMAG_DELIVERY_LEASE_SECONDS": "2",
    }
    return subprocess.Popen(
        [MAILMAG, "worker", "--batch", str(batch)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def issue_status(engine: Engine, issue_id: int) -> IssueStatus:
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        return issue.status


def wait_until_sent(engine: Engine, issue_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while issue_status(engine, issue_id) is not IssueStatus.sent:
        assert time.monotonic() < deadline, f"the issue did not finish within {timeout} s"
        time.sleep(0.1)


def finish_with_a_new_worker(
    engine: Engine, smtp_server: SMTPSink, tmp_path: Path, issue_id: int, timeout: float = 60
) -> None:
    """Start a worker, wait until the issue is sent, stop the worker."""
    process = worker(engine, smtp_server, tmp_path)
    try:
        wait_until_sent(engine, issue_id, timeout)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_killed_worker_loses_no_recipient(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    issue_id, people = seed(app, engine, RECIPIENTS)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    smtp_server.delay = 0.01

    first = worker(engine, smtp_server, tmp_path)
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 80:
        assert time.monotonic() < deadline, "the first worker sent too little"
        assert first.poll() is None
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = len(smtp_server.received)

    finish_with_a_new_worker(engine, smtp_server, tmp_path, issue_id)

    received = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    duplicates = sum(received.values()) - len(received)
    print(
        f"\nkill -9 after {at_kill} messages; {sum(received.values())} received, "
        f"{len(received)} distinct, {duplicates} duplicates"
    )
    assert set(received) == {p.email for p in people}
    # Unrecorded outcomes and transactions under way together stay within flush_every plus
    # one per connection: nothing beyond that may be sent twice.
    assert duplicates <= WorkerConfig().unrecorded_bound
