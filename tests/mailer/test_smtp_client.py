"""The lean SMTP client itself against a real SMTP server (aiosmtpd), with and without
PIPELINING: dots stuffed, line ends made CRLF, refusals reset the session. What every client
keeps (TLS, AUTH, refusals at each step, disconnects) is in test_transport_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mailer.errors import SMTPProtocolError, SMTPReplyError
from mailer.smtp import SMTPConnection
from tests.support.smtp import SMTPSink


@pytest.fixture(params=[False, True], ids=["sequential", "pipelined"])
def sink(request: pytest.FixtureRequest) -> Iterator[SMTPSink]:
    server = SMTPSink(pipelining=request.param)
    server.start()
    yield server
    server.stop()


async def connected(sink: SMTPSink) -> SMTPConnection:
    client = SMTPConnection(sink.host, sink.port, timeout=5, local_hostname="test")
    await client.connect()
    assert ("PIPELINING" in client.extensions) is sink.pipelining
    return client


async def test_dots_are_stuffed_and_line_ends_made_crlf(sink: SMTPSink) -> None:
    client = await connected(sink)
    body = b"Subject: x\r\n\r\n.starts with a dot\r\nline\n.\nbare\rend"
    reply = await client.send("a@example.com", "b@example.org", body)
    await client.quit()
    assert reply.code == 250
    [received] = sink.wait_for(1)
    assert received.data == b"Subject: x\r\n\r\n.starts with a dot\r\nline\r\n.\r\nbare\r\nend\r\n"


async def test_a_refusal_resets_the_session_and_the_next_transaction_goes(
    sink: SMTPSink,
) -> None:
    sink.refuse("gone@example.org", "550 5.1.1 no such user")
    sink.fail_data("552 5.3.4 too big")
    client = await connected(sink)
    with pytest.raises(SMTPReplyError) as refused:
        await client.send("a@example.com", "gone@example.org", b"Subject: 1\r\n\r\nx\r\n")
    assert refused.value.code == 550
    with pytest.raises(SMTPReplyError) as too_big:
        await client.send("a@example.com", "b@example.org", b"Subject: 2\r\n\r\nx\r\n")
    assert too_big.value.code == 552
    reply = await client.send("a@example.com", "c@example.org", b"Subject: 3\r\n\r\nx\r\n")
    await client.quit()
    assert reply.code == 250
    assert [r.rcpt_tos for r in sink.wait_for(1)] == [("c@example.org",)]


async def test_an_internationalised_address_uses_smtputf8(sink: SMTPSink) -> None:
    client = await connected(sink)
    await client.send("a@example.com", "山田@例え.jp", b"Subject: x\r\n\r\nx\r\n")
    await client.quit()
    assert sink.wait_for(1)[0].rcpt_tos == ("山田@例え.jp",)


@pytest.mark.parametrize("greeting", ["²²0 ready", "22 ready", "220x ready"])
async def test_a_reply_that_is_not_smtp_is_a_protocol_error(greeting: str) -> None:
    """A relay (or a processor's) that answers with other digits than ASCII ones ("²" is a
    digit to str.isdigit, not to int) is refused as not speaking SMTP, not a ValueError."""

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting.encode() + b"\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = SMTPConnection("127.0.0.1", port, timeout=5, local_hostname="test")
        with pytest.raises(SMTPProtocolError, match="not an SMTP reply"):
            await client.connect()
        client.close()
    finally:
        server.close()
        await server.wait_closed()
