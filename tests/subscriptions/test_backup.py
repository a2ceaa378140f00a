"""A backup restores into a fresh store with every subscriber and both hash chains intact; a
store with subscribers is not overwritten unless forced; a broken chain fails loudly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, select

from subscriptions import audit
from subscriptions.audit import Actor
from subscriptions.backup import BackupError, backup, restore
from subscriptions.db import for_writing, make_engine
from subscriptions.errors import StoreError
from subscriptions.models import ConsentEvent, Subscriber
from tests.mailer.test_sending import seed
from tests.support.databases import postgres_database, sqlite_copy


@contextmanager
def fresh_store(kind: str, directory: Path, template: Path) -> Iterator[Engine]:
    """An empty, migrated store of the same kind, to restore into."""
    if kind == "sqlite":
        directory.mkdir()
        engine = make_engine(sqlite_copy(template, directory), poolclass=NullPool)
        yield engine
        engine.dispose()
        return
    with postgres_database() as url:
        engine = make_engine(url, poolclass=NullPool)
        yield engine
        engine.dispose()


def test_backup_restore_and_verify(
    app: FastAPI, engine: Engine, tmp_path: Path, sqlite_template_file: Path
) -> None:
    _, people = seed(app, engine, 4)
    with Session(for_writing(engine)) as session:
        audit.record(session, Actor("cli:test"), "backup", subjects=[people[0].address_digest])
        session.commit()
    file = tmp_path / "mailmag.backup"
    digest = backup(engine, file)
    assert len(digest) == 64
    assert not file.with_name(file.name + ".partial").exists()

    with fresh_store(engine.dialect.name, tmp_path / "restored", sqlite_template_file) as target:
        checked = restore(target, file)
        assert (checked.subscribers, checked.audit_rows) == (4, 1)
        assert checked.consent_rows == 8  # a request and a confirmation each
        with Session(target) as session:
            emails = session.exec(select(Subscriber.email)).all()
        assert sorted(emails) == sorted(p.email for p in people)
        with pytest.raises(BackupError, match="--force"):
            restore(target, file)
        assert restore(target, file, force=True).subscribers == 4


def test_a_backup_of_a_tampered_store_fails_its_restore_loudly(
    app: FastAPI, engine: Engine, tmp_path: Path, sqlite_template_file: Path
) -> None:
    seed(app, engine, 2)
    with for_writing(engine).begin() as conn:
        conn.execute(text("UPDATE consent_event SET action = 'withdrawn' WHERE seq = 2"))
    file = tmp_path / "mailmag.backup"
    backup(engine, file)
    with (
        fresh_store(engine.dialect.name, tmp_path / "restored", sqlite_template_file) as target,
        pytest.raises(StoreError, match="consent ledger broken at row 2"),
    ):
        restore(target, file)


def test_a_missing_or_foreign_file_is_refused(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="there is no backup file"):
        restore(engine, tmp_path / "nothing")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a backup at all" * 100)
    with pytest.raises(BackupError):
        restore(engine, junk)
    with Session(engine) as session:
        assert session.exec(select(ConsentEvent).where(col(ConsentEvent.seq) > 0)).all() == []
