"""Liveness and readiness as a load balancer sees them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from subscriptions.app import create_app
from subscriptions.db import make_engine
from subscriptions.settings import Settings
from tests.conftest import TEST_SECRET


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
