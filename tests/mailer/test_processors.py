"""Processors receive only what they need: an issue goes through its processor's route,
carrying only the fields its template uses and the processor may receive; anything else is
refused with the field and the processor named; every hand-off leaves a transfer record."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.errors import NotCompliant
from mailer.models import Issue
from mailer.transport import SMTPRelay, SMTPTransport
from subscriptions.db import for_writing
from subscriptions.models import Subscriber, TransferRecord
from subscriptions.registry import load_registry
from subscriptions.runtime import Runtime
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.smtp import SMTPSink


def with_route(engine: Engine, issue_id: int, route: str, html: str) -> None:
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.route = route
        issue.html_body = html
        session.add(issue)
        session.commit()


def test_an_issue_goes_only_through_its_processor_with_only_the_fields_it_uses(
    routed_app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    runtime: Runtime = routed_app.state.runtime
    issue_id, people = seed(routed_app, engine, 5)  # each has a secret company name
    with_route(engine, issue_id, "sakura-delivery", "<p>Dear {{ subscriber.name }}</p>")
    processor_sink = SMTPSink()
    processor_sink.start()
    try:
        runtime.start_issue(issue_id)
        worker = worker_for(routed_app, engine, smtp_server)
        worker.routes = {
            "sakura-delivery": SMTPTransport(
                SMTPRelay(host=processor_sink.host, port=processor_sink.port)
            )
        }
        asyncio.run(drain(worker))
        assert smtp_server.received == []  # nothing through the operator's own relay
        received = processor_sink.received
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(p.email for p in people)
        for r in received:
            raw = r.data.decode("utf-8", "replace")
            assert "Secret Co" not in raw  # company: not used, never handed over
            assert "Reader " in raw  # name: used and allowed
            others = {p.email for p in people} - {r.rcpt_tos[0]}
            assert not any(other in raw for other in others)
    finally:
        processor_sink.stop()
    with Session(engine) as session:
        [record] = session.exec(select(TransferRecord)).all()
    assert (record.party, record.party_kind, record.fields, record.people) == (
        "sakura-delivery",
        "processor",
        "email,name",
        5,
    )
    assert record.legal_basis.startswith("entrustment")


@pytest.mark.parametrize(
    ("route", "html", "message"),
    [
        (
            "sakura-delivery",
            "<p>{{ subscriber.company }}</p>",
            "the template uses subscriber.company, which processor Sakura Delivery Services K.K. "
            "may not receive",
        ),
        (
            "old-mailer",
            "<p>Hello</p>",
            "processor Old Mailer Inc. may receive nothing: it is inactive",
        ),
        ("nobody", "<p>Hello</p>", "there is no processor or route 'nobody'"),
    ],
)
def test_an_issue_its_processor_may_not_serve_is_refused(
    route: str, html: str, message: str, routed_app: FastAPI, engine: Engine
) -> None:
    runtime: Runtime = routed_app.state.runtime
    issue_id, _people = seed(routed_app, engine, 1)
    with_route(engine, issue_id, route, html)
    with pytest.raises(NotCompliant) as refused:
        runtime.start_issue(issue_id)
    assert str(refused.value) == message
    with Session(engine) as session:
        assert session.exec(select(TransferRecord)).all() == []
        assert session.exec(select(Subscriber)).first() is not None


def test_expired_or_overdue_processors_receive_nothing() -> None:
    processor = load_registry().processor("sakura-delivery")
    assert processor is not None
    assert processor.unusable(processor.next_review) is None
    assert "review was due" in (processor.unusable(processor.next_review + timedelta(days=1)) or "")
    ended = processor.model_copy(update={"contract_end": date(2026, 1, 31)})
    assert "contract ended on 2026-01-31" in (ended.unusable(date(2026, 2, 1)) or "")
