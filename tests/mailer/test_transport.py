"""The SMTP transport against a real aiosmtpd server: outcomes per recipient, by type."""

from __future__ import annotations

import pytest

from mailer.capture import free_port
from mailer.transport import Envelope, Outcome, SMTPRelay, SMTPTransport
from tests.support.smtp import SMTPSink

MESSAGE = b"From: news@example.com\r\nTo: {to}\r\nSubject: Hello\r\n\r\nBody line\r\n.dot line\r\n"


def envelope(to: str) -> Envelope:
    return Envelope("bounce@example.com", to, MESSAGE.replace(b"{to}", to.encode()))


@pytest.fixture
def transport(smtp_server: SMTPSink) -> SMTPTransport:
    return SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port, pool_size=2))


async def test_accepted_message_arrives_intact(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    result = await transport.send(envelope("alice@example.org"))
    await transport.close()
    assert result.outcome is Outcome.sent
    [received] = smtp_server.received
    assert received.rcpt_tos == ("alice@example.org",)
    assert received.mail_from == "bounce@example.com"
    assert received.message()["Subject"] == "Hello"
    assert b"\r\n.dot line\r\n" in received.data  # dot-stuffing undone by the server


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


async def test_refused_recipient_fails_and_the_next_one_still_goes(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    smtp_server.refuse("gone@example.org", "550 5.1.1 No such user")
    refused = await transport.send(envelope("gone@example.org"))
    accepted = await transport.send(envelope("bob@example.org"))
    await transport.close()
    assert refused.outcome is Outcome.failed
    assert refused.code == 550
    assert "No such user" in refused.reply
    assert accepted.outcome is Outcome.sent
    assert [r.rcpt_tos for r in smtp_server.received] == [("bob@example.org",)]


async def test_temporary_refusal_is_deferred(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    smtp_server.refuse("busy@example.org", "451 4.3.0 Try again later")
    result = await transport.send(envelope("busy@example.org"))
    await transport.close()
    assert result.outcome is Outcome.deferred
    assert result.code == 451


async def test_data_rejections_are_classified_by_code(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    smtp_server.fail_data("452 4.3.1 Insufficient storage")
    smtp_server.fail_data("554 5.7.1 Rejected as spam")
    first = await transport.send(envelope("a@example.org"))
    second = await transport.send(envelope("b@example.org"))
    third = await transport.send(envelope("c@example.org"))
    await transport.close()
    assert (first.outcome, first.code) == (Outcome.deferred, 452)
    assert (second.outcome, second.code) == (Outcome.failed, 554)
    assert third.outcome is Outcome.sent


async def test_dropped_connection_defers_and_a_fresh_connection_is_used(
    transport: SMTPTransport, smtp_server: SMTPSink
) -> None:
    smtp_server.drop_data()
    dropped = await transport.send(envelope("a@example.org"))
    after = await transport.send(envelope("b@example.org"))
    await transport.close()
    assert dropped.outcome is Outcome.deferred
    assert after.outcome is Outcome.sent
    assert [r.rcpt_tos for r in smtp_server.received] == [("b@example.org",)]


async def test_unreachable_relay_defers() -> None:
    transport = SMTPTransport(SMTPRelay(host="127.0.0.1", port=free_port(), timeout=2))
    result = await transport.send(envelope("a@example.org"))
    assert result.outcome is Outcome.deferred
    assert result.code is None


async def test_connections_are_reused(transport: SMTPTransport, smtp_server: SMTPSink) -> None:
    for n in range(5):
        assert (await transport.send(envelope(f"r{n}@example.org"))).outcome is Outcome.sent
    assert len(transport._idle) == 1  # one persistent connection served all five
    await transport.close()
    assert len(smtp_server.received) == 5
