"""Databases for the suite: every store test runs on SQLite and on PostgreSQL.

Each test session creates its own PostgreSQL database (``mailmag_test_<random>``), migrates
it once and drops it at the end; after each test every table is truncated, so tests never
see each other's rows. For SQLite, a migrated template file is copied for each test.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool

from subscriptions import schema
from subscriptions.db import check_connection, make_engine

POSTGRES_ADMIN_URL = os.environ.get(
    "MAILMAG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    engine = make_engine(POSTGRES_ADMIN_URL, poolclass=NullPool)
    try:
        check_connection(engine)
    except Exception as exc:
        return str(exc)
    finally:
        engine.dispose()
    return None


@contextmanager
def postgres_database() -> Iterator[URL]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    name = f"mailmag_test_{secrets.token_hex(6)}"
    admin = make_engine(POSTGRES_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name)
    try:
        engine = make_engine(url, poolclass=NullPool)
        schema.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sqlite_template(directory: Path) -> Path:
    """A migrated SQLite file to copy for each test."""
    path = directory / "template.db"
    engine = make_engine(f"sqlite:///{path}", poolclass=NullPool)
    schema.upgrade(engine)
    engine.dispose()
    return path


def sqlite_copy(template: Path, directory: Path) -> URL:
    target = directory / "mailmag.db"
    shutil.copyfile(template, target)
    return make_url(f"sqlite:///{target}")


def truncate_all(engine: Engine) -> None:
    """Empty every application table and restart its ids (PostgreSQL); the ledger heads go
    back to the state the migrations leave them in."""
    tables = ", ".join(
        f'"{t.name}"' for t in schema.target_metadata.sorted_tables if t.name != "ledger_head"
    )
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(
            text("UPDATE ledger_head SET seq = 0, last_hash = :genesis"), {"genesis": "0" * 64}
        )
