"""The consent ledger proves itself: verify passes on an honest ledger and names the first
row that was altered, removed or reordered behind the application's back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, select

from subscriptions import consent
from subscriptions.addresses import AddressHasher
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.lifecycle import Lifecycle
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentPurpose,
    Magazine,
    Subscriber,
)
from tests.conftest import TEST_SECRET

HASHER = AddressHasher(TEST_SECRET.encode())
WEB = Evidence(ConsentChannel.web_form, "192.0.2.7", "Mozilla/5.0 test", "a" * 64)


def seed(engine: Engine, people: int = 3) -> None:
    """Each person asks for a magazine and joint use, then confirms: 4 events each."""
    lifecycle = Lifecycle(HASHER)
    with Session(engine) as session:
        magazine = Magazine(slug="weekly", title={"en": "Weekly"})
        session.add(magazine)
        for n in range(people):
            email = f"p{n}@example.org"
            subscriber = Subscriber(email=email, address_digest=HASHER.digest(email))
            session.add(subscriber)
            session.flush()
            lifecycle.request(session, subscriber, magazine, WEB)
            lifecycle.grant(session, subscriber, ConsentPurpose.joint_use, WEB)
            lifecycle.confirm(session, subscriber, Evidence(ConsentChannel.link, "192.0.2.8"))
        session.commit()


def verify(engine: Engine) -> consent.Verification:
    with Session(engine) as session:
        return consent.verify(session, digest=HASHER.digest)


def tamper(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def test_an_honest_ledger_verifies(engine: Engine) -> None:
    seed(engine)
    result = verify(engine)
    assert result.ok, result.problem
    assert result.checked == 12


def test_an_empty_ledger_verifies(engine: Engine) -> None:
    assert verify(engine).ok


def test_an_edited_row_is_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "UPDATE consent_event SET action = 'withdrawn' WHERE seq = 5")
    result = verify(engine)
    assert not result.ok
    assert result.seq == 5
    assert "altered" in result.problem


def test_an_edited_time_is_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "UPDATE consent_event SET occurred_at = '2020-01-01 00:00:00' WHERE seq = 7")
    result = verify(engine)
    assert (result.ok, result.seq) == (False, 7)


def test_an_edited_ip_is_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "UPDATE consent_event SET ip = '203.0.113.9' WHERE seq = 2")
    result = verify(engine)
    assert (result.ok, result.seq) == (False, 2)
    assert "IP" in result.problem


def test_a_removed_row_is_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "DELETE FROM consent_event WHERE seq = 6")
    result = verify(engine)
    assert (result.ok, result.seq) == (False, 7)
    assert "row 6 is missing" in result.problem


def test_a_removed_last_row_is_noticed(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "DELETE FROM consent_event WHERE seq = 12")
    result = verify(engine)
    assert not result.ok
    assert "removed" in result.problem


def test_reordered_rows_are_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "UPDATE consent_event SET seq = -1 WHERE seq = 3")
    tamper(engine, "UPDATE consent_event SET seq = 3 WHERE seq = 4")
    tamper(engine, "UPDATE consent_event SET seq = 4 WHERE seq = -1")
    result = verify(engine)
    assert (result.ok, result.seq) == (False, 3)


def test_a_row_moved_to_another_person_is_named(engine: Engine) -> None:
    seed(engine)
    tamper(engine, "UPDATE consent_event SET subscriber_id = 2 WHERE seq = 1")
    result = verify(engine)
    assert (result.ok, result.seq) == (False, 1)
    assert "another subscriber" in result.problem


def test_erasing_personal_fields_keeps_the_chain_valid(engine: Engine) -> None:
    seed(engine)
    with Session(engine) as session:
        subscriber = session.exec(
            select(Subscriber).where(Subscriber.email == "p1@example.org")
        ).one()
        assert subscriber.id is not None
        assert consent.erase_personal_fields(session, subscriber_id=subscriber.id) == 4
        session.commit()
    assert verify(engine).ok


def test_concurrent_appends_form_one_chain(engine: Engine) -> None:
    lifecycle = Lifecycle(HASHER)
    with Session(engine) as session:
        session.add(
            Subscriber(email="busy@example.org", address_digest=HASHER.digest("busy@example.org"))
        )
        session.commit()

    def append_many() -> None:
        for _ in range(15):
            with Session(for_writing(engine)) as session:
                subscriber = session.exec(select(Subscriber)).one()
                lifecycle.grant(session, subscriber, ConsentPurpose.joint_use, WEB)
                session.commit()

    threads = [threading.Thread(target=append_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(engine)
    assert result.ok, result.problem
    assert result.checked == 60


def test_a_connection_that_guessed_the_tip_wrong_still_appends_in_place(engine: Engine) -> None:
    """A connection remembers where it left the chain, to move the head without reading it
    first; another connection's appends, and its own rolled-back one, make that guess wrong,
    and the chain stays whole."""

    def events(count: int) -> list[dict[str, Any]]:
        return [
            consent.event_row(
                subscriber_id=None,
                subject_digest=HASHER.digest("gone@example.org"),
                purpose=ConsentPurpose.joint_use,
                action=ConsentAction.granted,
                evidence=WEB,
            )
            for _ in range(count)
        ]

    head_statements: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "ledger_head" in statement:
            head_statements.append(statement)

    def append(conn: Connection, count: int) -> int:
        """Append ``count`` events on ``conn``; how many statements touched the head."""
        head_statements.clear()
        consent.append_rows(conn, events(count))
        return len(head_statements)

    writer = for_writing(engine)
    event.listen(engine, "before_cursor_execute", watch)
    try:
        with writer.connect() as mine, writer.connect() as other:
            with mine.begin():
                assert append(mine, 2) == 2  # no guess yet: told where the head is
            with other.begin():
                assert append(other, 3) == 2
            with mine.begin():
                assert append(mine, 1) == 2  # its guess is behind: the other appended
            rolled_back = mine.begin()
            append(mine, 2)  # a tip that never was
            rolled_back.rollback()
            with mine.begin():
                assert append(mine, 1) == 2
            with mine.begin():
                assert append(mine, 1) == 1  # a right guess: the head moved in one statement
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    result = verify(engine)
    assert result.ok, result.problem
    assert result.checked == 8


def run_cli(args: list[str], engine: Engine, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    env |= {
        "MAILMAG_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "MAILMAG_SECRET_KEY": TEST_SECRET,
    }
    mailmag = str(Path(sys.executable).parent / "mailmag")
    return subprocess.run(
        [mailmag, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_command_reports_intact_then_the_tampered_row(
    engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    intact = run_cli(["consent", "verify"], engine, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "12 rows verified" in intact.stdout
    tamper(engine, "UPDATE consent_event SET scope = 'forged' WHERE seq = 9")
    broken = run_cli(["consent", "verify"], engine, tmp_path)
    assert broken.returncode == 1
    assert "row 9" in broken.stderr


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_evidence_command_exports_rows_and_notice_texts(engine: Engine, tmp_path: Path) -> None:
    seed(engine, people=1)
    with Session(engine) as session:
        session.execute(
            text(
                "INSERT INTO notice_version (content_hash, locale, body, created_at) "
                "VALUES (:h, 'en', 'The notice text.', '2026-01-01 00:00:00')"
            ),
            {"h": "a" * 64},
        )
        session.commit()
    result = run_cli(["consent", "evidence", "P0@Example.org"], engine, tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert [e["seq"] for e in bundle["events"]] == [1, 2, 3, 4]
    assert bundle["notices"]["a" * 64]["text"] == "The notice text."
