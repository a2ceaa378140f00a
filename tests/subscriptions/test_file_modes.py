"""Every file mailmag writes is readable by its owner alone from the moment it exists: the
store and its companions, the generated secret, captured mail, backups and every export.

The processes here run with the common umask 022, under which a file created the ordinary
way is 0644 (world-readable).
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from mailer.capture import CaptureServer, read_captured
from subscriptions.backup import backup
from subscriptions.settings import load_settings
from tests.support.files import mode, not_private

MAILMAG = str(Path(sys.executable).parent / "mailmag")
NOTICE = "個人情報の取扱いについて"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mailmag(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    done = subprocess.run(
        [MAILMAG, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0o022,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_store_secret_exports_and_backups_of_the_shell_are_private(tmp_path: Path) -> None:
    """One data directory through the commands that write files: nothing in it ends up
    readable by others (the test's own input files aside)."""
    notice_hash = hashlib.sha256(NOTICE.encode()).hexdigest()
    (tmp_path / "notice.txt").write_text(NOTICE, encoding="utf-8")
    (tmp_path / "list.csv").write_text(
        "email,name,consented_at,consent_method,notice_hash\n"
        f"ann@example.org,Ann,2025-06-01T10:00:00+09:00,paper form,{notice_hash}\n"
        "not an address,Cat,,,\n",
        encoding="utf-8",
    )
    mine = frozenset({"notice.txt", "list.csv"})
    mailmag(["migrate"], tmp_path)
    mailmag(
        [
            *("import", "list.csv", "--magazine", "weekly", "--staff", "officer"),
            *("--basis", "consent", "--notice-file", "notice.txt", "--errors", "refused.csv"),
        ],
        tmp_path,
    )
    mailmag(
        [
            *("export", "weekly", "--fields", "email,name", "--staff", "officer"),
            *("--out", "weekly.csv"),
        ],
        tmp_path,
    )
    mailmag(["joint-use", "export", "sakura-america", "--out", "joint.csv"], tmp_path)
    mailmag(["parties", "export", "sakura-america", "--out", "notices.json"], tmp_path)
    mailmag(
        [
            *("provide", "--party", "Police", "--reference", "order 1", "--basis", "law"),
            *("--address", "ann@example.org", "--fields", "email", "--staff", "officer"),
            *("--out", "provided.json"),
        ],
        tmp_path,
    )
    mailmag(["backup", "mailmag.backup"], tmp_path)

    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")} - mine
    for expected in (
        "mailmag.db",
        "mailmag.secret",
        "refused.csv",
        "weekly.csv",
        "joint.csv",
        "notices.json",
        "provided.json",
        "mailmag.backup",
    ):
        assert expected in written
    assert "Ann" in (tmp_path / "weekly.csv").read_text()
    assert not_private(tmp_path, mine) == {}


def test_a_new_store_and_its_wal_are_private(umask_022: None, tmp_path: Path) -> None:
    from subscriptions import schema
    from subscriptions.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/new.db")
    try:
        schema.upgrade(engine)  # writes: the -wal and -shm files exist while it is open
        companions = sorted(p.name for p in tmp_path.iterdir())
        assert {"new.db", "new.db-wal", "new.db-shm"} <= set(companions)
        assert not_private(tmp_path) == {}
    finally:
        engine.dispose()


def test_the_secret_is_created_private_without_a_chmod(
    umask_022: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created 0600, not created 0644 and then narrowed (another local user could have
    opened it in between): no chmod is ever needed."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the secret file was chmod-ed after it was created")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)
    data = tmp_path / "data"
    key = load_settings(_env_file=None, data_dir=data).resolved_secret()
    assert load_settings(_env_file=None, data_dir=data).resolved_secret() == key
    assert [p.name for p in data.iterdir()] == ["mailmag.secret"]  # no draft left behind
    assert mode(data / "mailmag.secret") == 0o600
    assert mode(data) == 0o700


def test_captured_mail_is_private(umask_022: None, tmp_path: Path) -> None:
    server = CaptureServer(tmp_path / "captured-mail")
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port) as smtp:
            smtp.sendmail(
                "news@example.com",
                ["reader@example.org"],
                "Subject: hello\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
            )
    finally:
        server.stop()
    [message] = read_captured(tmp_path / "captured-mail")
    assert message.envelope_to == "reader@example.org"
    assert message.subject == "hello"
    assert not_private(tmp_path) == {}


def test_a_backup_is_private(umask_022: None, engine: Engine, tmp_path: Path) -> None:
    """On both databases: SQLite's copy and pg_dump's file alike."""
    (tmp_path / "backups").mkdir(mode=0o700)
    target = tmp_path / "backups" / "mailmag.backup"
    backup(engine, target)
    assert mode(target) == 0o600
