"""Two leaders across a database restart: two ``mailmag serve`` processes on one
PostgreSQL database, and the leader's advisory lock taken away as a restart takes it (its
connection ended by the server). Before the fix the old leader never noticed: the other
took the lock, and both swept, every two seconds, for good. Now the old leader checks its
lock before each sweep and steps down, so at no moment do both sweep; a scheduled issue
still goes out, once to each reader.

PostgreSQL only: on SQLite the leader's lock is a ``flock`` that a database restart cannot
take away (there is no server), and ``tests/mailer/test_scheduler.py`` covers its loss.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.capture import free_port
from mailer.clock import utcnow
from mailer.leader import ADVISORY_KEY
from mailer.models import Issue, IssueStatus
from subscriptions.db import for_writing
from tests.mailer.test_crash import MAILMAG, issue_status
from tests.mailer.test_scale_out import env_for
from tests.mailer.test_sending import seed
from tests.reliability.conftest import record
from tests.support.smtp import SMTPSink

WATCH_SECONDS = 12.0
_METRIC = re.compile(r"^(mailmag_scheduler_leader|mailmag_scheduler_sweeps_total) (\S+)$", re.M)


def _scrape(base: str) -> tuple[bool, float] | None:
    """(leads, sweeps so far) of one server, or None if it does not answer."""
    try:
        page = httpx.get(f"{base}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    values = dict(_METRIC.findall(page))
    return float(values["mailmag_scheduler_leader"]) == 1, float(
        values["mailmag_scheduler_sweeps_total"]
    )


def _kill_the_leaders_lock(engine: Engine) -> int:
    """End the backend that holds the scheduler's advisory lock, as a restart would."""
    with engine.connect() as conn:
        ended = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = :high AND objid = :low AND granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"high": ADVISORY_KEY >> 32, "low": ADVISORY_KEY & 0xFFFFFFFF},
        ).all()
        conn.commit()
    return len(ended)


@pytest.mark.slow
def test_two_servers_never_sweep_together_across_a_database_restart(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a database restart takes away PostgreSQL's advisory lock only")
    issue_id, people = seed(app, engine, 20)
    env = env_for(engine, smtp_server) | {"MAILMAG_LOG_LEVEL": "WARNING"}
    bases, servers, logs = [], [], []
    for n in range(2):
        port = free_port()
        bases.append(f"http://127.0.0.1:{port}")
        log = (tmp_path / f"serve{n}.log").open("w")
        logs.append(log)
        servers.append(
            subprocess.Popen(
                [MAILMAG, "serve"],
                cwd=tmp_path,
                env=env | {"MAILMAG_HTTP_PORT": str(port), "MAILMAG_DATA_DIR": str(tmp_path)},
                stdout=log,
                stderr=log,
            )
        )
    both_swept = 0
    samples = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            states = [_scrape(base) for base in bases]
            if all(s is not None for s in states) and any(s and s[0] for s in states):
                break
            assert time.monotonic() < deadline, "no server led the scheduler"
            time.sleep(0.3)
        assert _kill_the_leaders_lock(engine) == 1
        with Session(for_writing(engine)) as session:  # an issue due after the "restart"
            issue = session.get(Issue, issue_id)
            assert issue is not None
            issue.status = IssueStatus.scheduled
            issue.scheduled_at = utcnow() + timedelta(seconds=4)
            session.add(issue)
            session.commit()
        time.sleep(2.5)  # one sweep interval for the old leader to notice (and a margin)
        previous = [_scrape(base) for base in bases]
        watch_until = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < watch_until:
            time.sleep(2.5)  # a little over one sweep interval between looks
            now = [_scrape(base) for base in bases]
            grew = [
                a is not None and b is not None and b[1] > a[1]
                for a, b in zip(previous, now, strict=True)
            ]
            samples += 1
            both_swept += all(grew)
            previous = now
        deadline = time.monotonic() + 60
        while issue_status(engine, issue_id) is not IssueStatus.sent:
            assert time.monotonic() < deadline, "the scheduled issue was not sent"
            time.sleep(0.2)
        leaders = [s[0] for s in (_scrape(base) for base in bases) if s is not None]
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
        for log in logs:
            log.close()
    received = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    name = "two leaders across a database restart [postgresql]"
    record(
        name, "looks at which both servers swept", f"{both_swept} of {samples}", "0", not both_swept
    )
    record(name, "leaders at the end", sum(leaders), "1", sum(leaders) == 1)
    assert both_swept == 0, f"both servers swept in {both_swept} of {samples} looks"
    assert sum(leaders) == 1
    assert received == Counter({p.email: 1 for p in people})
    stepped_down = "".join((tmp_path / f"serve{n}.log").read_text() for n in range(2)).count(
        "lost the scheduler lock"
    )
    assert stepped_down == 1
