"""Log lines are JSON objects without addresses, link tokens or client addresses, unless the
debug setting keeps them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.audit import Actor
from subscriptions.db import for_writing
from subscriptions.logs import CleanTextFormatter, JSONFormatter, configure
from subscriptions.models import PrivacyRequest
from subscriptions.runtime import Runtime
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.pages import hidden_fields, link_in, local, page_link
from tests.support.server import serving
from tests.support.smtp import SMTPSink


def record(
    message: str, *args: object, name: str = "mailmag", **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_line_is_json_with_its_extra_fields_and_no_personal_data() -> None:
    line = JSONFormatter().format(
        record("mail to %s via /preferences/%s failed", "ann@example.org", "abc.DEF-1", issue_id=7)
    )
    entry = json.loads(line)
    assert entry["message"] == "mail to <address> via /preferences/<token> failed"
    assert entry["issue_id"] == 7
    assert entry["level"] == "info"
    assert "ann@example.org" not in line


def test_access_lines_keep_method_path_and_status_but_not_the_client() -> None:
    access = record(
        '%s - "%s %s HTTP/%s" %d',
        "192.0.2.44:5555",
        "POST",
        "/u/sometoken?lang=ja",
        "1.1",
        200,
        name="uvicorn.access",
    )
    entry = json.loads(JSONFormatter().format(access))
    assert entry == entry | {"message": "request", "method": "POST", "status": 200}
    assert entry["path"] == "/u/<token>?lang=ja"
    assert "client" not in entry
    debug = json.loads(JSONFormatter(personal_data=True).format(access))
    assert debug["client"] == "192.0.2.44:5555"
    assert debug["path"] == "/u/sometoken?lang=ja"


def test_text_lines_are_cleaned_too() -> None:
    line = CleanTextFormatter().format(record("bounce from bob@example.com"))
    assert line.endswith("mailmag: bounce from <address>")


class Records(logging.Handler):
    """Every record as it reaches a handler: what any handler an operator adds would see."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[tuple[io.StringIO, Records]]:
    """mailmag's logging, as ``mailmag serve`` sets it up, written to a buffer; restored
    afterwards."""
    root = logging.getLogger()
    kept = (list(root.handlers), root.level, logging.getLogRecordFactory())
    buffer, raw = io.StringIO(), Records()
    configure(fmt="json", level="DEBUG", stream=buffer)
    root.addHandler(raw)
    try:
        yield buffer, raw
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in kept[0]:
            root.addHandler(handler)
        root.setLevel(kept[1])
        logging.setLogRecordFactory(kept[2])
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).propagate = False  # as uvicorn's own config leaves them


def _token(url: str, prefix: str) -> str:
    return local(url).split(prefix, 1)[1].split("?", 1)[0].split("/", 1)[0]


def test_no_token_reaches_any_log_line_of_a_flow_that_uses_links(
    app: FastAPI,
    engine: Engine,
    smtp_server: SMTPSink,
    logged: tuple[io.StringIO, Records],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sign up, confirm, preferences, export, erase request, a disclosure request and its
    bundle, a contact-form request and its verification, an issue's unsubscribe and
    preferences links, and a failing request whose error quotes its URL: no token is in any
    line written or any record made, while the access lines are there."""
    buffer, raw = logged
    runtime: Runtime = app.state.runtime
    issue_id, [reader] = seed(app, engine, 1)
    runtime.start_issue(issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    message = smtp_server.wait_for(1)[0]
    carried = message.mail_from.split("+", 1)[1].split("@", 1)[0]
    tokens = {carried}
    with serving(app, access_log=True) as base, httpx.Client(base_url=base) as web:
        form = web.get("/subscribe")
        data = {**hidden_fields(form.text), "email": "logged@example.org", "magazines": "weekly"}
        assert web.post("/subscribe", data=data).status_code == 200
        confirm = local(link_in(smtp_server.wait_for(2)[1].message(), "/confirm/"))
        tokens.add(_token(confirm, "/confirm/"))
        web.get(confirm)
        preferences = page_link(web.post(confirm).text, "/preferences/").split("?")[0]
        tokens.add(_token(preferences, "/preferences/"))
        web.get(preferences)
        web.post(f"{preferences}/export")
        web.post(f"{preferences}/erase")
        erase = local(link_in(smtp_server.wait_for(3)[2].message(), "/erase/"))
        tokens.add(_token(erase, "/erase/"))
        web.get(erase)
        web.post(f"{preferences}/request", data={"kind": "disclosure"})
        with Session(for_writing(engine)) as session:
            asked = session.exec(select(PrivacyRequest)).one()
            runtime.desk.complete(session, asked, Actor("staff:1 officer", ""), "Here it is.")
            session.commit()
        disclosure = local(link_in(smtp_server.wait_for(4)[3].message(), "/disclosure/"))
        tokens.add(_token(disclosure, "/disclosure/"))
        web.get(disclosure)
        assert web.post(disclosure).status_code == 200
        web.post("/contact", data={"kind": "consultation", "address": reader.email})
        verify = local(link_in(smtp_server.wait_for(5)[4].message(), "/verify/"))
        tokens.add(_token(verify, "/verify/"))
        web.get(verify)
        web.post(verify)
        web.get(f"/preferences/{carried}")
        web.get(f"/u/{carried}")

        def failing(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError(f"could not build the bundle for {base}{preferences}/export")

        assert web.post(f"/u/{carried}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
        monkeypatch.setattr(runtime.self_service, "export", failing)
        assert web.post(f"{preferences}/export").status_code == 500
    written = buffer.getvalue()
    assert len(tokens) == 6
    assert '"path": "/verify/<token>"' in written  # the access lines are there
    assert "could not build the bundle" in written  # and the error's
    assert [t for t in tokens if t in written or t.upper() in written.upper()] == []
    assert [t for t in tokens if any(t in line for line in raw.seen)] == []
    assert reader.email not in written
