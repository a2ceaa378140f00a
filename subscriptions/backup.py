"""Backups and restores of the whole store.

SQLite: the online backup API copies a consistent snapshot while the service runs; the copy is
checked (``PRAGMA integrity_check``) before it replaces the destination. PostgreSQL: ``pg_dump
--format=custom`` (the password goes through ``PGPASSWORD``, never the command line) and
``pg_restore --clean --if-exists --single-transaction``.

The backup file is created readable by its owner alone (0600), as the store is.

A restore refuses to overwrite a store that holds subscribers unless forced, and stop the
service first: a restore replaces everything underneath it. After a restore both hash chains
(the consent ledger and the audit log) are verified; a broken chain fails the restore loudly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from mailer.private_files import PRIVATE_UMASK, create_private
from subscriptions import audit, consent
from subscriptions.errors import MailmagError, StoreError
from subscriptions.models import Subscriber


class BackupError(MailmagError):
    """A backup or restore could not be made; the message says why."""


@dataclass(frozen=True, slots=True)
class Checked:
    subscribers: int
    consent_rows: int
    audit_rows: int


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _sqlite_path(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:":
        raise BackupError("this SQLite database has no file to back up")
    return Path(database)


def _libpq(engine: Engine) -> tuple[str, dict[str, str]]:
    url = engine.url
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    tool = shutil.which(command[0])
    if tool is None:
        raise BackupError(f"{command[0]} is not installed (Debian: postgresql-client)")
    done = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
        [tool, *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        umask=PRIVATE_UMASK,  # pg_dump creates its output file: 0600
    )
    if done.returncode != 0:
        raise BackupError(f"{command[0]} failed: {done.stderr.strip() or done.returncode}")


def backup(engine: Engine, destination: Path) -> str:
    """Write a backup to ``destination`` (replaced only once complete); return its SHA-256."""
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    if engine.dialect.name == "sqlite":
        source = sqlite3.connect(_sqlite_path(engine))
        create_private(partial)
        target = sqlite3.connect(partial)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            (result,) = target.execute("PRAGMA integrity_check").fetchone()
        finally:
            target.close()
            source.close()
        if result != "ok":
            partial.unlink(missing_ok=True)
            raise BackupError(f"the copy failed its integrity check: {result}")
    else:
        url, env = _libpq(engine)
        _run(["pg_dump", "--format=custom", "--no-owner", "--file", str(partial), url], env)
    partial.replace(destination)
    return sha256_of(destination)


def restore(engine: Engine, source: Path, *, force: bool = False) -> Checked:
    """Replace the store with the backup in ``source``, then verify both hash chains."""
    if not source.is_file():
        raise BackupError(f"there is no backup file {source}")
    if not force and _subscribers(engine) > 0:
        raise BackupError("the database holds subscribers: restore with --force to replace them")
    if engine.dialect.name == "sqlite":
        backup_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        create_private(_sqlite_path(engine))
        live = sqlite3.connect(_sqlite_path(engine))
        try:
            (result,) = backup_db.execute("PRAGMA integrity_check").fetchone()
            if result != "ok":
                raise BackupError(f"the backup failed its integrity check: {result}")
            backup_db.backup(live)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{source} is not a SQLite backup: {exc}") from None
        finally:
            live.close()
            backup_db.close()
        engine.dispose()
    else:
        url, env = _libpq(engine)
        engine.dispose()
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--dbname",
                url,
                str(source),
            ],
            env,
        )
    return check(engine)


def _subscribers(engine: Engine) -> int:
    try:
        with Session(engine) as session:
            return int(session.exec(select(func.count()).select_from(Subscriber)).one())
    except SQLAlchemyError:  # no schema yet: nothing to lose
        return 0


def check(engine: Engine) -> Checked:
    """Both hash chains intact, or ``StoreError`` naming the first bad row."""
    with Session(engine) as session:
        ledger = consent.verify(session)
        log = audit.verify(session)
        people = int(session.exec(select(func.count()).select_from(Subscriber)).one())
    if not ledger.ok:
        raise StoreError(f"consent ledger broken at row {ledger.seq}: {ledger.problem}")
    if not log.ok:
        raise StoreError(f"audit log broken at row {log.seq}: {log.problem}")
    return Checked(people, ledger.checked, log.checked)
