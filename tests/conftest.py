"""Shared fixtures: the store on both databases, the app, a real SMTP server.

``engine`` is parametrised over SQLite and PostgreSQL, so every test that touches the store
runs on both. PostgreSQL is required: set ``MAILMAG_TEST_POSTGRES_URL`` to point elsewhere;
the suite fails (it does not skip) when the server cannot be reached, since a green run
must mean both engines passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import URL, Engine
from sqlmodel import Session

from mailer.clock import utcnow
from subscriptions.app import create_app
from subscriptions.db import make_engine
from subscriptions.registry import EXAMPLE_REGISTRY
from subscriptions.settings import Settings
from tests.support.databases import (
    postgres_available,
    postgres_database,
    sqlite_copy,
    sqlite_template,
    truncate_all,
)
from tests.support.smtp import SMTPSink

TEST_SECRET = "test-secret-" + "x" * 40


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[URL]:
    reason = postgres_available()
    if reason is not None:
        pytest.fail(f"PostgreSQL is required for the store tests and is unreachable: {reason}")
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: URL) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store of each kind; nothing a test writes reaches the next test."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template_file")
        sqlite_engine = make_engine(sqlite_copy(template, tmp_path))
        yield sqlite_engine
        sqlite_engine.dispose()
    else:
        pg_engine: Engine = request.getfixturevalue("postgres_engine")
        try:
            yield pg_engine
        finally:
            truncate_all(pg_engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as db_session:
        yield db_session


@pytest.fixture
def smtp_server() -> Iterator[SMTPSink]:
    sink = SMTPSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def settings(engine: Engine, tmp_path: Path, smtp_server: SMTPSink) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=engine.url.render_as_string(hide_password=False),
        secret_key=TEST_SECRET,
        base_url="http://testserver",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_tls="none",
        sender_address="news@example.com",
        sender_name="Example News",
    )


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def routed_app(settings: Settings, engine: Engine, tmp_path: Path) -> FastAPI:
    """The example registry with its processor's review a year ahead (so tests do not age),
    served without a worker or scheduler of its own."""
    text = EXAMPLE_REGISTRY.read_text(encoding="utf-8").replace(
        "next_review = 2027-03-31", f"next_review = {utcnow().date() + timedelta(days=365)}"
    )
    registry = tmp_path / "registry.toml"
    registry.write_text(text, encoding="utf-8")
    return create_app(
        settings.model_copy(update={"registry_file": registry}), engine=engine, delivery=False
    )


METRICS_TOKEN = "scrape-me-please-0123456789"
WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"


@pytest.fixture
def locked_app(engine: Engine, routed_app: FastAPI) -> Iterator[FastAPI]:
    """The routed app with every door locked (a metrics token, a webhook secret), started."""
    live = routed_app.state.runtime.settings.model_copy(
        update={
            "metrics_token": SecretStr(METRICS_TOKEN),
            "webhook_secret": SecretStr(WEBHOOK_SECRET),
        }
    )
    app = create_app(live, engine=engine, delivery=False)
    with TestClient(app):
        yield app
