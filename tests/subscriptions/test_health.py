"""Liveness and readiness as a load balancer sees them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from subscriptions.app import create_app
from subscriptions.db import make_engine
from subscriptions.settings import Settings
from tests.conftest import TEST_SECRET
from tests.support.pages import hidden_fields


def test_healthz_answers_while_the_process_runs(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_is_ready_when_the_schema_is_at_head(client: TestClient, engine: Engine) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_readyz_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, secret_key=TEST_SECRET)
    app = create_app(settings, engine=make_engine(settings.sqlalchemy_url))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "mailmag migrate" in response.json()["detail"]


def test_readyz_refuses_an_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        secret_key=TEST_SECRET,
        database_url="postgresql://nobody@127.0.0.1:1/none",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database: ")


class _ReadOnlyStore:
    """Makes the database itself refuse writes while reads still work, as a full disk or a
    read-only volume does: SQLite's ``query_only`` on each connection taken, PostgreSQL's
    read-only transactions (the refusals are the databases' own: SQLITE_READONLY, SQLSTATE
    25006). Nothing of it outlives a connection's use, so the next test's store is whole."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.on = False
        self.hook = (
            ("checkout", self._checkout)
            if engine.dialect.name == "sqlite"
            else ("begin", self._begin)
        )
        event.listen(engine, *self.hook)

    def _checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute(f"PRAGMA query_only = {'ON' if self.on else 'OFF'}")

    def _begin(self, connection: Connection) -> None:
        if self.on:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")

    def remove(self) -> None:
        event.remove(self.engine, *self.hook)


@pytest.fixture
def read_only(engine: Engine) -> Iterator[_ReadOnlyStore]:
    store = _ReadOnlyStore(engine)
    yield store
    store.remove()


def test_a_store_that_cannot_write_makes_the_process_unready_and_answers_503(
    app: FastAPI, read_only: _ReadOnlyStore
) -> None:
    with TestClient(app) as client:  # stopped before the store is set right again
        _refused_while_read_only(client, app, read_only)


def _refused_while_read_only(client: TestClient, app: FastAPI, read_only: _ReadOnlyStore) -> None:
    readiness = app.state.runtime.readiness
    readiness.probe_every = 0  # probe at every ask
    assert client.get("/readyz").status_code == 200
    page = client.get("/subscribe")
    form = {**hidden_fields(page.text), "email": "a@example.org", "magazines": ["weekly"]}
    api_form = client.get("/api/v1/subscribe/form").json()

    read_only.on = True
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "refused a write" in answer.json()["detail"]

    # The sign-up form and the JSON API: 503 with Retry-After and a clear message, not a 500.
    refused = client.post("/subscribe", data=form)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "try again" in refused.text
    refused = client.post(
        "/api/v1/subscribe",
        json={
            "email": "b@example.org",
            "magazines": ["weekly"],
            "notice_hash": api_form["notice_hash"],
            "form_token": api_form["form_token"],
        },
    )
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "try again" in refused.json()["detail"]

    # Once writes go through again, so does readiness (after the refusals have aged).
    read_only.on = False
    readiness.storage_failure_seconds = 0.2
    time.sleep(0.3)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert client.post("/subscribe", data=form).status_code == 200


def test_readyz_reports_a_scheduler_whose_sweeps_stopped(client: TestClient, app: FastAPI) -> None:
    runtime = app.state.runtime
    deadline = time.monotonic() + 15
    while not runtime.scheduler.health().leading:
        assert time.monotonic() < deadline, "the app's scheduler did not lead"
        time.sleep(0.05)
    assert client.get("/readyz").status_code == 200
    runtime.scheduler.stale_after = timedelta(0)  # any sweep is now overdue
    runtime.scheduler.sweep = timedelta(hours=1)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "scheduler" in answer.json()["detail"]
