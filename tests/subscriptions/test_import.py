"""CSV imports: confirmed only with evidence and a legal basis, never re-subscribing anyone who
left or was suppressed, every problem reported by line, the same file twice changes nothing,
and the ledger stays intact with each row pointing at its batch."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from subscriptions import audit, consent
from subscriptions.audit import Actor
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.errors import InvalidInput
from subscriptions.importing import Importer
from subscriptions.models import (
    AuditEvent,
    AuditSubject,
    ConsentChannel,
    ConsentEvent,
    ImportBatch,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    SystemMail,
)
from subscriptions.runtime import Runtime
from subscriptions.suppression import suppress
from tests.mailer.test_sending import seed

STAFF = Actor("cli:test as the privacy officer", "terminal")
NOTICE = "個人情報の取扱いについて (2025年版)"
NOTICE_HASH = hashlib.sha256(NOTICE.encode()).hexdigest()


def importer(app: FastAPI) -> Importer:
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    return Importer(runtime.engine, runtime.optin)


def write(tmp_path: Path, body: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def statuses(engine: Engine) -> dict[str, SubscriptionStatus]:
    with Session(engine) as session:
        rows = session.exec(
            select(Subscriber.email, Subscription.status).join(
                Subscription, col(Subscription.subscriber_id) == Subscriber.id
            )
        ).all()
    return {email: SubscriptionStatus(status) for email, status in rows}


def test_rows_with_evidence_and_a_basis_come_in_confirmed_the_rest_pending(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    notice = write(tmp_path, NOTICE, "notice.txt")
    path = write(
        tmp_path,
        "Email,Name,consented_at,consent_method,notice_hash\n"
        f"ann@example.org,Ann,2025-06-01T10:00:00+09:00,paper form at the seminar,{NOTICE_HASH}\n"
        "ben@example.org,Ben,,,\n"
        "not an address,Cat,,,\n"
        f"dan@example.org,Dan,2025-06-01,web form,{'0' * 64}\n"
        "ann@example.org,Ann again,,,\n"
        "eve@example.org,Eve,2025-06-01,,\n",
    )
    report = importer(app).run(
        path, magazine="weekly", actor=STAFF, basis="consent (Art. 3 Act)", notice_file=notice
    )
    assert report.counts == {
        "rows": 6,
        "confirmed": 1,
        "pending": 1,
        "unchanged": 0,
        "refused": 4,
    }
    assert [line for line, _ in report.problems] == [4, 5, 6, 7]
    reasons = " | ".join(reason for _, reason in report.problems)
    assert "not a valid e-mail address" in reasons
    assert "no stored notice has this hash" in reasons
    assert "appears earlier in the file" in reasons
    assert "give consented_at, consent_method and notice_hash" in reasons
    assert statuses(engine) == {
        "ann@example.org": SubscriptionStatus.confirmed,
        "ben@example.org": SubscriptionStatus.pending,
    }
    with Session(engine) as session:
        events = session.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq))).all()
        assert consent.verify(session).ok
        assert audit.verify(session).ok
        batch = session.exec(select(ImportBatch)).one()
    ann = [e for e in events if e.user_agent and "seminar" in e.user_agent]
    assert [e.action.value for e in ann] == ["granted", "confirmed"]
    assert ann[0].notice_hash == NOTICE_HASH
    assert ann[0].occurred_at.isoformat().startswith("2025-06-01T01:00:00")
    assert {e.import_batch_id for e in events} == {batch.id}
    assert {e.channel for e in events} == {ConsentChannel.import_}
    assert batch.counts["confirmed"] == 1


def test_without_a_legal_basis_even_evidenced_rows_come_in_pending(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    notice = write(tmp_path, NOTICE, "notice.txt")
    path = write(
        tmp_path,
        f"email,consented_at,consent_method,notice_hash\nann@example.org,2025-01-01,web,{NOTICE_HASH}\n",
    )
    importer(app).run(path, magazine="weekly", actor=STAFF, notice_file=notice)
    assert statuses(engine) == {"ann@example.org": SubscriptionStatus.pending}


def test_an_import_never_resubscribes_anyone_who_left_or_was_suppressed(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    runtime: Runtime = app.state.runtime
    _, [stays, leaver] = seed(app, engine, 2)
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, leaver.id)
        assert person is not None
        runtime.self_service.unsubscribe(session, person, "weekly", Evidence(ConsentChannel.link))
        suppress(
            session,
            digest=runtime.optin.hasher.digest("blocked@example.org"),
            reason=SuppressionReason.complaint,
        )
        session.commit()
    path = write(
        tmp_path,
        f"email\n{stays.email}\n{leaver.email}\nBLOCKED@example.org\nnew@example.org\n",
    )
    report = importer(app).run(path, magazine="weekly", actor=STAFF, confirm_by_mail=True)
    assert report.counts == {
        "rows": 4,
        "confirmed": 0,
        "pending": 1,
        "unchanged": 1,
        "refused": 2,
    }
    assert statuses(engine) == {
        stays.email: SubscriptionStatus.confirmed,
        leaver.email: SubscriptionStatus.unsubscribed,
        "new@example.org": SubscriptionStatus.pending,
    }
    with Session(engine) as session:
        mails = session.exec(select(SystemMail.recipient)).all()
    assert mails == ["new@example.org"]  # the confirmation request, only to the new person


def test_the_same_file_twice_changes_nothing(app: FastAPI, engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "email\n" + "".join(f"p{n}@example.org\n" for n in range(2500)))
    first = importer(app).run(path, magazine="weekly", actor=STAFF)
    assert first.counts["pending"] == 2500
    with Session(engine) as session:
        before = session.exec(select(ConsentEvent.row_hash)).all()
    again = importer(app).run(path, magazine="weekly", actor=STAFF)
    assert again.already_imported
    assert again.batch_id == first.batch_id
    with Session(engine) as session:
        assert session.exec(select(ConsentEvent.row_hash)).all() == before
    # The same rows in another file: nobody is added twice.
    copy = write(tmp_path, path.read_text() + "\n", "copy.csv")
    third = importer(app).run(copy, magazine="weekly", actor=STAFF)
    assert third.counts["unchanged"] == 2500
    assert third.counts["pending"] == 0


def test_the_audit_row_of_an_import_names_everyone_it_brought_in(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    """Over more than one chunk: each person subscribed (pending here) is a subject of the
    import's audit row; a refused line and a person already subscribed are not."""
    people = [f"p{n}@example.org" for n in range(2100)]
    first = write(tmp_path, "email\n" + "".join(f"{p}\n" for p in people[:5]), "first.csv")
    importer(app).run(first, magazine="weekly", actor=STAFF)
    path = write(tmp_path, "email\n" + "".join(f"{p}\n" for p in people) + "not an address\n")
    report = importer(app).run(path, magazine="weekly", actor=STAFF)
    assert (report.counts["pending"], report.counts["unchanged"]) == (2095, 5)
    hasher = app.state.runtime.optin.hasher
    with Session(engine) as session:
        row = session.exec(
            select(AuditEvent).where(AuditEvent.action == "import").order_by(col(AuditEvent.seq))
        ).all()[-1]
        named = session.exec(
            select(AuditSubject.subject_digest).where(AuditSubject.audit_id == row.id)
        ).all()
        assert audit.verify(session).ok
    assert row.subjects == 2095
    assert sorted(named) == sorted(hasher.digest(p) for p in people[5:])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "a header row is required"),
        ("name\nAnn\n", "no email column"),
        ("email,password\na@example.org,x\n", "unknown columns ['password']"),
    ],
)
def test_a_file_it_cannot_read_is_refused_before_anything_is_written(
    app: FastAPI, engine: Engine, tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        importer(app).run(write(tmp_path, body), magazine="weekly", actor=STAFF)
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []
        assert session.exec(select(ImportBatch)).all() == []
    with pytest.raises(InvalidInput, match="no magazine"):
        importer(app).run(write(tmp_path, "email\n"), magazine="nope", actor=STAFF)


def test_a_file_that_is_not_utf8_is_refused(app: FastAPI, tmp_path: Path) -> None:
    path = tmp_path / "sjis.csv"
    path.write_bytes("email,name\na@example.org,山田\n".encode("shift_jis"))
    with pytest.raises(InvalidInput, match="not UTF-8"):
        importer(app).run(path, magazine="weekly", actor=STAFF)
