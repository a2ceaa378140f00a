"""The pooled SMTP transport against a real aiosmtpd server: what the pool itself does
(reuse, its bound, a relay that is not there, the CA file), for both clients. How each
outcome is classified is the contract's (test_transport_contract.py)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.capture import free_port
from mailer.models import Issue
from mailer.smtp import make_transparent
from mailer.transport import Envelope, Outcome, SMTPClient, SMTPRelay, SMTPTransport
from subscriptions.db import for_writing
from subscriptions.runtime import Runtime
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.smtp import SMTPSink

MESSAGE = b"From: news@example.com\r\nTo: {to}\r\nSubject: Hello\r\n\r\nBody line\r\n.dot line\r\n"
CLIENTS = [SMTPClient.lean, SMTPClient.aiosmtplib]


def envelope(to: str) -> Envelope:
    return Envelope("bounce@example.com", to, MESSAGE.replace(b"{to}", to.encode()))


@pytest.fixture(params=CLIENTS, ids=[c.value for c in CLIENTS])
def transport(request: pytest.FixtureRequest, smtp_server: SMTPSink) -> SMTPTransport:
    return SMTPTransport(
        SMTPRelay(host=smtp_server.host, port=smtp_server.port, pool_size=2, client=request.param)
    )


async def test_a_transparent_message_arrives_byte_for_byte(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    """What the composer vouches for (CRLF only, no line begins with a dot) is sent as it
    is, and the server receives exactly those bytes."""
    message = b"From: news@example.com\r\nSubject: Hello\r\n\r\n=2Edot line\r\nend\r\n"
    result = await transport.send(
        Envelope("bounce@example.com", "alice@example.org", message, transparent=True)
    )
    await transport.close()
    assert result.outcome is Outcome.sent
    [received] = smtp_server.received
    assert received.data == message
    assert received.mail_from == "bounce@example.com"


async def test_connections_are_reused(transport: SMTPTransport, smtp_server: SMTPSink) -> None:
    for n in range(5):
        assert (await transport.send(envelope(f"r{n}@example.org"))).outcome is Outcome.sent
    assert len(transport._idle) == 1  # one persistent connection served all five
    await transport.close()
    assert len(smtp_server.received) == 5
    assert smtp_server.commands.count("EHLO") == 1


async def test_no_more_sessions_than_the_pool_allows(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    smtp_server.delay = 0.05
    results = await asyncio.gather(
        *(transport.send(envelope(f"r{n}@example.org")) for n in range(8))
    )
    await transport.close()
    assert {r.outcome for r in results} == {Outcome.sent}
    assert smtp_server.commands.count("EHLO") == 2  # pool_size sessions, each reused


@pytest.mark.parametrize("client", CLIENTS, ids=[c.value for c in CLIENTS])
async def test_a_relay_that_is_not_there_is_unavailable(client: SMTPClient) -> None:
    transport = SMTPTransport(
        SMTPRelay(host="127.0.0.1", port=free_port(), timeout=2, client=client)
    )
    result = await transport.send(envelope("a@example.org"))
    assert result.outcome is Outcome.unavailable
    assert result.code is None
    assert "connect call failed" in result.reply.lower()
    assert not transport.ready
    await transport.close()


def test_an_issue_sent_through_aiosmtplib_arrives_as_composed(
    app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """MAILMAG_SMTP_ISSUE_CLIENT=aiosmtplib: the worker's messages (quoted-printable, a dot
    that would begin a line written =2E) arrive whole, to every recipient."""
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 3)
    with Session(for_writing(engine)) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.html_body = "<p>Hello {{ subscriber.name }}</p><p>.a dot</p>"
        session.add(issue)
        session.commit()
    runtime.start_issue(issue_id)
    worker = worker_for(app, engine, smtp_server)
    worker.transport = SMTPTransport(
        SMTPRelay(host=smtp_server.host, port=smtp_server.port, client=SMTPClient.aiosmtplib)
    )
    asyncio.run(drain(worker))
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(p.email for p in people)
    for received in smtp_server.received:
        assert make_transparent(received.data) == received.data  # nothing for DATA to change
        assert received.message()["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
