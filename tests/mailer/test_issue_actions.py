"""What staff may do to an issue in each status: the one table (``mailer.issues``) that the
marketing API enforces and the issue editor offers, and changes that stay refused when the
issue moves on while they wait for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer import issues
from mailer.issues import Action
from mailer.models import Issue, IssueStatus
from subscriptions.db import for_writing
from subscriptions.models import StaffRole
from tests.mailer.test_api import create, token_for, weekly_with_readers

S = IssueStatus

# The issue (item 22 of issue 21) as it was written: what each status offers.
OFFERED = {
    S.draft: ["save", "test-send", "schedule", "send-now"],
    S.scheduled: ["send-now", "unschedule"],
    S.sending: ["pause", "cancel"],
    S.paused: ["resume", "cancel"],
    S.sent: [],
    S.cancelled: [],
}


@pytest.fixture
def marketer(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(engine, StaffRole.marketer)}"}


def test_each_status_offers_what_the_issue_editor_shows() -> None:
    assert {s: list(issues.actions_for(s)) for s in IssueStatus} == OFFERED
    assert issues.actions_by_status() == {s.value: a for s, a in OFFERED.items()}
    # the status changes the table makes are the ones the state machine allows, no more
    moves = {
        S.draft: {S.scheduled, S.sending},
        S.scheduled: {S.draft, S.sending},
        S.sending: {S.paused, S.cancelled, S.sent},
        S.paused: {S.sending, S.cancelled},
        S.sent: set(),
        S.cancelled: set(),
    }
    assert moves == issues.ALLOWED


def call(client: TestClient, headers: dict[str, str], issue_id: int, action: Action) -> Any:
    path = f"/api/v1/issues/{issue_id}"
    if action is Action.save:
        return client.patch(path, json={"subject": "Changed"}, headers=headers)
    body: dict[str, Any] | None = None
    if action is Action.test_send:
        body = {"addresses": ["proof@example.com"]}
    if action is Action.schedule:
        body = {"at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    return client.post(f"{path}/{action.value}", json=body, headers=headers)


def put_in(engine: Engine, issue_id: int, status: IssueStatus) -> None:
    """Set the status straight in the store, as the engine's own moves would leave it."""
    with Session(for_writing(engine)) as session:
        issue = session.get_one(Issue, issue_id)
        issue.status = status
        if status is S.scheduled:
            issue.scheduled_at = datetime.now(UTC) + timedelta(days=1)
        session.add(issue)
        session.commit()


def stored(engine: Engine, issue_id: int) -> Issue:
    with Session(engine, expire_on_commit=False) as session:
        return session.get_one(Issue, issue_id)


@pytest.mark.parametrize("status", list(IssueStatus))
def test_the_api_refuses_exactly_what_a_status_does_not_offer(
    client: TestClient,
    app: FastAPI,
    engine: Engine,
    marketer: dict[str, str],
    status: IssueStatus,
) -> None:
    magazine_id = weekly_with_readers(app, engine, 0)
    for action in Action:
        issue_id = create(client, marketer, magazine_id).json()["id"]
        put_in(engine, issue_id, status)
        answer = call(client, marketer, issue_id, action)
        after = stored(engine, issue_id)
        if action.value in OFFERED[status]:
            assert answer.status_code == 200, (status, action, answer.text)
            target = issues.STAFF_ACTIONS[action].target
            if target is S.sending:  # it has nobody left to mail: sent as soon as it moves
                assert after.status in {S.sending, S.sent}
            else:
                assert after.status is (target or status)
        else:
            assert answer.status_code == 409, (status, action, answer.text)
            assert f"is {status.value}" in answer.json()["detail"]
            assert (after.status, after.subject) == (status, "Weekly news")


def wait_for_a_lock_waiter(engine: Engine) -> None:
    """Until a transaction of this database waits for a row lock (PostgreSQL); SQLite's
    writers queue for the one write lock instead, so a waiter there needs no looking for."""
    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + 20
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the request never waited for the issue's row")


def while_the_engine_moves_it(
    engine: Engine,
    issue_id: int,
    to: IssueStatus,
    request: Callable[[], Any],
) -> Any:
    """Send ``request`` while another transaction holds the issue's row and moves it to
    ``to`` (as the worker's finish or the scheduler's start do); its answer once that
    transaction has committed."""
    answers: list[Any] = []
    with Session(for_writing(engine)) as session:
        issue = session.get_one(Issue, issue_id, with_for_update=True)
        waiter = threading.Thread(target=lambda: answers.append(request()))
        waiter.start()
        wait_for_a_lock_waiter(engine)
        issue.status = to
        session.add(issue)
        session.commit()
    waiter.join(timeout=30)
    assert answers, "the request did not finish"
    return answers[0]


def test_a_save_waiting_for_an_issue_that_starts_meanwhile_is_refused(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    magazine_id = weekly_with_readers(app, engine, 0)
    issue_id = create(client, marketer, magazine_id).json()["id"]
    answer = while_the_engine_moves_it(
        engine,
        issue_id,
        S.sending,
        lambda: client.patch(
            f"/api/v1/issues/{issue_id}", json={"subject": "Too late"}, headers=marketer
        ),
    )
    assert answer.status_code == 409, answer.text
    assert stored(engine, issue_id).subject == "Weekly news"  # what goes out is what started


def test_a_pause_waiting_for_an_issue_that_finishes_meanwhile_is_refused(
    client: TestClient, app: FastAPI, engine: Engine, marketer: dict[str, str]
) -> None:
    magazine_id = weekly_with_readers(app, engine, 0)
    issue_id = create(client, marketer, magazine_id).json()["id"]
    put_in(engine, issue_id, S.sending)
    answer = while_the_engine_moves_it(
        engine,
        issue_id,
        S.sent,
        lambda: client.post(f"/api/v1/issues/{issue_id}/pause", headers=marketer),
    )
    assert answer.status_code == 409, answer.text
    assert stored(engine, issue_id).status is S.sent  # a sent issue is never paused
