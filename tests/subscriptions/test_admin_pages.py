"""The admin pages' content: dashboard figures, registries and notice diffs, the audit log
and its export (itself audited), the subscriber search (an audited read)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.sending import start_issue
from subscriptions import dashboard
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    AuditEvent,
    AuditSubject,
    ConsentChannel,
    Magazine,
    NoticeVersion,
    StaffRole,
    Subscriber,
)
from subscriptions.notice import Notice, record_notice
from subscriptions.runtime import Runtime
from subscriptions.transfers import record_transfer
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.smtp import SMTPSink
from tests.support.staff import add_staff, login


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def test_the_dashboard_counts_subscribers_confirmations_and_unsubscribes(
    app: FastAPI, engine: Engine
) -> None:
    _issue, people = seed(app, engine, 3)
    runtime = runtime_of(app)
    with Session(for_writing(engine)) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        runtime.optin.lifecycle.end(session, person, [weekly], Evidence(ConsentChannel.link))
        session.commit()
    with Session(engine) as session:
        today = dashboard.today()
        subscribers = dashboard.subscribers_over_time(session, today)
        flows = dashboard.confirmations_and_unsubscribes(session, today)
    weekly_line = next(line for line in subscribers.lines if line.name == "Sakura Weekly")
    assert weekly_line.last == 2
    assert len(flows.rects) == 2 * dashboard.WINDOW_DAYS
    today_bars = [r.title for r in flows.rects if r.title.startswith(today.strftime("%m-%d"))]
    assert sorted(today_bars) == [
        f"{today:%m-%d} · confirmations: 3",
        f"{today:%m-%d} · unsubscribes: 1",
    ]


def test_registries_list_processors_and_the_notice_diff_shows_what_changed(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    with Session(for_writing(engine)) as session:
        ids = []
        for body in (
            "Purpose: newsletters.\nRetention: 3 years.\n",
            "Purpose: newsletters.\nRetention: 5 years.\n",
        ):
            digest = hashlib.sha256(body.encode()).hexdigest()
            ids.append(record_notice(session, Notice("en", body, digest)).id)
        session.commit()
    page = client.get("/admin/registries")
    assert page.status_code == 200
    assert "Sakura" in page.text
    assert f"/admin/notices?a={ids[0]}&amp;b={ids[1]}" in page.text
    diff = client.get("/admin/notices", params={"a": ids[0], "b": ids[1]})
    assert "<del>3</del>" in diff.text
    assert "<ins>5</ins>" in diff.text
    assert client.get("/admin/notices", params={"a": ids[0], "b": 999999}).status_code == 404
    with Session(engine) as session:
        assert len(session.exec(select(NoticeVersion)).all()) >= 2


def test_the_notice_page_without_parameters_shows_the_newest_change(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    """Opened from the menu or a bookmark, with no ``a`` and ``b``: a page, never raw JSON.
    With nothing to compare it says so; then it shows the newest change, and a version
    named alone is compared with its neighbour."""
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    with Session(for_writing(engine)) as session:
        for stored in session.exec(select(NoticeVersion)).all():  # shown by the app's start
            session.delete(stored)
        session.commit()
    empty = client.get("/admin/notices")
    assert empty.status_code == 200
    assert empty.headers["content-type"].startswith("text/html")
    assert "No notice has been shown yet." in empty.text
    with Session(for_writing(engine)) as session:
        ids = []
        for locale, body in (
            ("en", "Retention: 3 years.\n"),
            ("ja", "保存期間: 3年\n"),
            ("en", "Retention: 5 years.\n"),
        ):
            digest = hashlib.sha256(body.encode()).hexdigest()
            ids.append(record_notice(session, Notice(locale, body, digest)).id)
        session.commit()
    newest = client.get("/admin/notices")
    assert newest.status_code == 200
    assert f"Notice #{ids[0]} → #{ids[2]} (en)" in newest.text
    assert "<del>3</del>" in newest.text
    assert "<ins>5</ins>" in newest.text
    first_ja = client.get("/admin/notices", params={"b": ids[1]})
    assert first_ja.status_code == 200
    assert "is the first ja version" in first_ja.text
    since = client.get("/admin/notices", params={"a": ids[0]})
    assert f"Notice #{ids[0]} → #{ids[2]} (en)" in since.text
    assert client.get("/admin/notices", params={"b": 999999}).status_code == 404


def test_an_admin_page_asked_for_with_a_bad_value_answers_with_a_page(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    """A browser gets a page naming the problem (the API keeps its JSON)."""
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    bad = client.get("/admin/notices", params={"a": "latest"}, headers=browser)
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("text/html")
    assert "That did not work" in bad.text
    assert "<strong>a</strong>" in bad.text
    script = client.get("/admin/audit", params={"before": "x"}, headers={"Accept": "*/*"})
    assert script.status_code == 422
    assert script.headers["content-type"] == "application/json"


def test_searching_subscribers_is_an_audited_read_and_the_export_audits_itself(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    _issue, people = seed(app, engine, 3)
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    found = client.get("/admin/subscribers", params={"q": "reader1"})
    assert people[1].email in found.text
    assert people[0].email not in found.text
    wildcard = client.get("/admin/subscribers", params={"q": "%%%"})  # matched literally
    assert wildcard.text.count("@example.org") == 0
    with Session(engine) as session:
        search, blank = session.exec(
            select(AuditEvent)
            .where(AuditEvent.action == "subscriber.searched")
            .order_by(col(AuditEvent.seq))
        ).all()
        subjects = session.exec(
            select(AuditSubject.subject_digest).where(AuditSubject.audit_id == search.id)
        ).all()
    assert subjects == [people[1].address_digest]
    assert blank.subjects == 0
    assert search.actor.startswith("staff:")
    assert search.actor.endswith(f" {email}")

    exported = client.get("/admin/audit/export")
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert rows[-1]["action"] == "audit.exported"  # recorded before the first byte left
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    page = client.get("/admin/audit", params={"verify": "true"})
    assert "The chain verifies" in page.text
    with Session(engine) as session:
        actions = session.exec(select(AuditEvent.action).order_by(col(AuditEvent.seq))).all()
    assert actions.count("staff.login") == 1


def test_the_privacy_officer_sees_every_transfer_record(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    _issue, people = seed(app, engine, 2)
    with Session(for_writing(engine)) as session:
        record_transfer(
            session,
            party="sakura-america",
            party_kind="joint_user",
            fields=["email", "name"],
            people=[(p.id, p.address_digest) for p in people],
            purpose="joint_use",
            legal_basis="consent (APPI Art. 27(5)(iii))",
            triggered_by="cli:test",
        )
        session.commit()
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    page = client.get("/admin/transfers")
    assert page.status_code == 200
    row = re.search(r"<td>sakura-america</td>.*?</tr>", page.text, re.S)
    assert row is not None
    assert "<td>email,name</td>" in row.group(0)
    assert '<td class="num">2</td>' in row.group(0)


def test_a_search_holding_a_nul_character_is_refused_not_a_server_error(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    """Found by the fuzzing soak on PostgreSQL, whose text cannot hold NUL: the subscriber
    search and the audit filter answered 500. They answer 422 now, on either database."""
    seed(app, engine, 1)
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    login(client, email, seed_)
    for path, params in (
        ("/admin/subscribers", {"q": "reader\x000"}),
        ("/admin/audit", {"action": "subscriber\x00"}),
    ):
        answer = client.get(path, params=params)
        assert answer.status_code in (200, 422), (path, answer.status_code)
        if engine.dialect.name == "postgresql":
            assert answer.status_code == 422
            assert "NUL" in answer.text


def test_the_report_groups_failures_by_code_and_status_and_shows_no_one(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    issue_id, people = seed(app, engine, 4)
    for person in people[:2]:
        smtp_server.refuse(person.email, f"550 5.1.1 <{person.email}>: User unknown")
    smtp_server.refuse(people[2].email, f"554 5.7.1 <{people[2].email}> rejected as spam")
    runtime = runtime_of(app)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    email, seed_ = add_staff(engine, StaffRole.marketer, runtime.secret_box())
    login(client, email, seed_)
    page = client.get(f"/admin/issues/{issue_id}/report")
    assert page.status_code == 200
    assert "@example.org" not in page.text
    assert "User unknown" not in page.text
    rows = re.findall(
        r"<tr><td>(\d+)</td><td>([\d.]+)</td><td>([^<]+)</td><td>([^<]+)</td>"
        r'<td class="num">(\d+)</td></tr>',
        page.text,
    )
    assert rows == [
        ("550", "5.1.1", "permanent: bad destination mailbox address", "suppressed", "2"),
        (
            "554",
            "5.7.1",
            "permanent: delivery not authorized, message refused",
            "kept (a block)",
            "1",
        ),
    ]
