"""The one ``Transport`` contract, run against every implementation: the lean client and
aiosmtplib behind the pooled transport, against a real aiosmtpd with certificates made here
(STARTTLS, implicit TLS, AUTH PLAIN and LOGIN, refusals at each step, disconnects, an
untrusted certificate), and the in-memory transport where the contract does not need a
server.

Outcomes per envelope: ``sent``; ``deferred`` for a 4xx or a connection lost during the
transaction; ``failed`` for a 5xx or a message over the relay's SIZE; ``unavailable`` when
no session could be opened (the relay's circuit opens and ``ready`` turns false).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailer.transport import (
    Envelope,
    MemoryTransport,
    Outcome,
    SMTPClient,
    SMTPRelay,
    SMTPTransport,
    TLSMode,
    Transport,
)
from tests.support.certs import Certificates, make_certificates
from tests.support.smtp import SMTPSink

MESSAGE = (
    b"From: news@example.com\r\nTo: reader@example.org\r\nSubject: Hello\r\n\r\n"
    b"Body line\r\n.a line that begins with a dot\r\n..and one with two\r\nend\r\n"
)
CLIENTS = [SMTPClient.lean, SMTPClient.aiosmtplib]


def envelope(to: str = "reader@example.org", message: bytes = MESSAGE) -> Envelope:
    return Envelope("bounce@example.com", to, message)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(params=CLIENTS, ids=[c.value for c in CLIENTS])
def client(request: pytest.FixtureRequest) -> SMTPClient:
    value: SMTPClient = request.param
    return value


@pytest.fixture
def servers() -> Iterator[list[SMTPSink]]:
    started: list[SMTPSink] = []
    yield started
    for server in started:
        server.stop()


Serve = Callable[..., SMTPSink]


@pytest.fixture
def serve(servers: list[SMTPSink]) -> Serve:
    """Start an ``SMTPSink`` with these options; it is stopped after the test."""

    def start(**options: object) -> SMTPSink:
        server = SMTPSink(**options)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    return start


def transport_to(
    server: SMTPSink,
    client: SMTPClient,
    *,
    tls: TLSMode = TLSMode.none,
    ca_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    pool_size: int = 2,
) -> SMTPTransport:
    return SMTPTransport(
        SMTPRelay(
            host=server.host,
            port=server.port,
            tls=tls,
            username=username,
            password=password,
            timeout=5,
            pool_size=pool_size,
            local_hostname="mailmag.test",
            client=client,
            ca_file=str(ca_file) if ca_file else None,
        )
    )


# --- the contract every transport keeps, the in-memory one included --------------------------


@pytest.fixture(params=["lean", "aiosmtplib", "memory"])
def any_transport(
    request: pytest.FixtureRequest, serve: Serve
) -> Iterator[tuple[Transport, SMTPSink | None]]:
    if request.param == "memory":
        yield MemoryTransport(), None
        return
    server = serve(pipelining=True)
    yield transport_to(server, SMTPClient(request.param), pool_size=4), server


def delivered(transport: Transport, server: SMTPSink | None) -> list[tuple[str, bytes]]:
    if server is None:
        assert isinstance(transport, MemoryTransport)
        return [(e.recipient, e.message) for e in transport.sent]
    return [(r.rcpt_tos[0], r.data) for r in server.received]


async def test_every_envelope_is_answered_and_arrives_intact(
    any_transport: tuple[Transport, SMTPSink | None],
) -> None:
    transport, server = any_transport
    assert transport.ready
    results = await asyncio.gather(
        *(transport.send(envelope(f"r{n}@example.org")) for n in range(10))
    )
    await transport.close()
    await transport.close()  # closing twice is harmless
    assert [r.outcome for r in results] == [Outcome.sent] * 10
    assert sorted(delivered(transport, server)) == [
        (f"r{n}@example.org", MESSAGE) for n in range(10)
    ]


# --- sessions: TLS, AUTH, HELO ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "mechanism"),
    [
        (TLSMode.starttls, "PLAIN"),
        (TLSMode.starttls, "LOGIN"),
        (TLSMode.tls, "PLAIN"),
        (TLSMode.tls, "LOGIN"),
    ],
)
async def test_tls_with_auth(
    client: SMTPClient, serve: Serve, certificates: Certificates, tls: TLSMode, mechanism: str
) -> None:
    server = serve(
        tls=tls.value,
        context=certificates.server_context(),
        password="right",
        mechanisms=(mechanism,),
    )
    transport = transport_to(
        server, client, tls=tls, ca_file=certificates.ca_file, username="u", password="right"
    )
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.sent, result
    [received] = server.received
    assert (received.tls, received.login) == (True, "u")
    assert received.data == MESSAGE
    assert server.commands.index("AUTH") > server.commands.index(
        "STARTTLS" if tls is TLSMode.starttls else "EHLO"
    )


@pytest.mark.parametrize("tls", [TLSMode.starttls, TLSMode.tls])
async def test_an_untrusted_certificate_takes_no_mail(
    client: SMTPClient, serve: Serve, certificates: Certificates, tls: TLSMode
) -> None:
    server = serve(tls=tls.value, context=certificates.server_context(trusted=False))
    transport = transport_to(server, client, tls=tls, ca_file=certificates.ca_file)
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.unavailable
    assert "CERTIFICATE_VERIFY_FAILED" in result.reply
    assert server.received == []
    assert "MAIL" not in server.commands


async def test_without_the_ca_file_a_private_ca_is_not_trusted(
    client: SMTPClient, serve: Serve, certificates: Certificates
) -> None:
    server = serve(tls="starttls", context=certificates.server_context())
    transport = transport_to(server, client, tls=TLSMode.starttls)
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.unavailable
    assert "CERTIFICATE_VERIFY_FAILED" in result.reply


async def test_credentials_never_cross_an_unencrypted_session(
    client: SMTPClient, serve: Serve
) -> None:
    server = serve(password="right")  # offers AUTH in the clear
    transport = transport_to(server, client, username="u", password="right")
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.unavailable
    assert "unencrypted" in result.reply
    assert "AUTH" not in server.commands
    assert server.received == []


async def test_a_relay_without_starttls_is_refused_when_it_is_required(
    client: SMTPClient, serve: Serve
) -> None:
    server = serve()
    transport = transport_to(server, client, tls=TLSMode.starttls)
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.unavailable
    assert "does not offer STARTTLS" in result.reply
    assert "MAIL" not in server.commands


async def test_a_wrong_password_is_the_relays_problem_not_the_recipients(
    client: SMTPClient, serve: Serve, certificates: Certificates
) -> None:
    server = serve(tls="starttls", context=certificates.server_context(), password="right")
    transport = transport_to(
        server,
        client,
        tls=TLSMode.starttls,
        ca_file=certificates.ca_file,
        username="u",
        password="wrong",
    )
    result = await transport.send(envelope())
    assert not transport.ready
    await transport.close()
    assert (result.outcome, result.code) == (Outcome.unavailable, 535)
    assert server.received == []


async def test_helo_when_ehlo_is_refused(client: SMTPClient, serve: Serve) -> None:
    server = serve()
    server.script("EHLO", "502 5.5.2 EHLO not implemented")
    transport = transport_to(server, client)
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.sent, result
    assert server.commands[server.commands.index("EHLO") + 1] == "HELO"
    assert len(server.received) == 1


# --- refusals at each step --------------------------------------------------------------------

SESSION_REFUSALS = [
    ("connect", "421 4.3.2 Service not available"),
    ("connect", "554 5.3.2 No service for you"),
    ("connect", "drop"),
    ("EHLO", "421 4.3.2 Closing"),
    ("STARTTLS", "454 4.7.0 TLS not available now"),
]


@pytest.mark.parametrize(("step", "reply"), SESSION_REFUSALS)
async def test_a_refused_session_is_unavailable_and_opens_the_circuit(
    client: SMTPClient, serve: Serve, certificates: Certificates, step: str, reply: str
) -> None:
    tls = TLSMode.starttls if step == "STARTTLS" else TLSMode.none
    server = serve(tls=tls.value, context=certificates.server_context())
    server.script(step, reply)
    transport = transport_to(server, client, tls=tls, ca_file=certificates.ca_file)
    result = await transport.send(envelope())
    assert result.outcome is Outcome.unavailable
    assert not transport.ready
    again = await transport.send(envelope("other@example.org"))  # held at once, not tried
    assert again.outcome is Outcome.unavailable
    await transport.close()
    assert server.received == []


async def test_ehlo_and_helo_refused_is_unavailable(client: SMTPClient, serve: Serve) -> None:
    server = serve()
    server.script("EHLO", "502 5.5.2 no")
    server.script("HELO", "550 5.7.1 not you")
    transport = transport_to(server, client)
    result = await transport.send(envelope())
    await transport.close()
    assert (result.outcome, result.code) == (Outcome.unavailable, 550)


TRANSACTION_REFUSALS = [
    ("MAIL", "451 4.3.0 Try later", Outcome.deferred),
    ("MAIL", "553 5.7.1 Sender refused", Outcome.failed),
    ("RCPT", "450 4.2.1 Mailbox busy", Outcome.deferred),
    ("RCPT", "550 5.1.1 No such user", Outcome.failed),
    ("DATA", "451 4.3.0 Not now", Outcome.deferred),
    ("DATA", "554 5.5.1 No valid recipients", Outcome.failed),
]


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelined"])
@pytest.mark.parametrize(("step", "reply", "outcome"), TRANSACTION_REFUSALS)
async def test_a_refusal_in_the_transaction_is_the_recipients_and_the_next_one_goes(
    client: SMTPClient, serve: Serve, step: str, reply: str, outcome: Outcome, pipelining: bool
) -> None:
    server = serve(pipelining=pipelining)
    server.script(step, reply)
    transport = transport_to(server, client, pool_size=1)
    refused = await transport.send(envelope("first@example.org"))
    after = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert (refused.outcome, refused.code) == (outcome, int(reply[:3]))
    assert reply[4:] in refused.reply
    assert transport.ready  # a recipient's refusal never opens the circuit
    assert after.outcome is Outcome.sent
    assert [r.rcpt_tos for r in server.received] == [("second@example.org",)]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("452 4.3.1 Insufficient storage", Outcome.deferred), ("554 5.7.1 Spam", Outcome.failed)],
)
async def test_a_refusal_after_the_message_is_the_recipients(
    client: SMTPClient, serve: Serve, reply: str, outcome: Outcome
) -> None:
    server = serve()
    server.fail_data(reply)
    transport = transport_to(server, client, pool_size=1)
    refused = await transport.send(envelope("first@example.org"))
    after = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert (refused.outcome, refused.code) == (outcome, int(reply[:3]))
    assert after.outcome is Outcome.sent


# --- disconnects ------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "DATA"])
async def test_a_connection_lost_in_the_transaction_defers_and_the_next_goes(
    client: SMTPClient, serve: Serve, step: str
) -> None:
    server = serve()
    server.script(step, "drop")
    transport = transport_to(server, client, pool_size=1)
    lost = await transport.send(envelope("first@example.org"))
    after = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert lost.outcome is Outcome.deferred
    assert transport.ready
    assert after.outcome is Outcome.sent
    assert [r.rcpt_tos for r in server.received] == [("second@example.org",)]


async def test_a_connection_lost_after_the_message_defers(client: SMTPClient, serve: Serve) -> None:
    server = serve()
    server.drop_data()
    transport = transport_to(server, client, pool_size=1)
    lost = await transport.send(envelope("first@example.org"))
    after = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert lost.outcome is Outcome.deferred
    assert after.outcome is Outcome.sent


async def test_an_idle_connection_the_relay_closed_is_replaced_without_a_deferral(
    client: SMTPClient, serve: Serve
) -> None:
    """A relay that restarts (or times idle sessions out) leaves dead sessions in the pool:
    the message was never written to them, so it goes at once over a fresh one."""
    server = serve()
    transport = transport_to(server, client, pool_size=1)
    assert (await transport.send(envelope("first@example.org"))).outcome is Outcome.sent
    server.stop()
    server.restart()
    result = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert result.outcome is Outcome.sent, result
    assert [r.rcpt_tos for r in server.received] == [
        ("first@example.org",),
        ("second@example.org",),
    ]


async def test_an_idle_session_timed_out_with_421_is_replaced(
    client: SMTPClient, serve: Serve
) -> None:
    server = serve()
    transport = transport_to(server, client, pool_size=1)
    assert (await transport.send(envelope("first@example.org"))).outcome is Outcome.sent
    server.script("MAIL", "421 4.4.2 Idle timeout exceeded")
    result = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert result.outcome is Outcome.sent, result
    assert len(server.received) == 2


# --- the wire's bounds: SIZE, over-long replies -----------------------------------------------


async def test_a_message_over_the_relays_size_fails_before_mail(
    client: SMTPClient, serve: Serve
) -> None:
    server = serve(size_limit=2000)
    transport = transport_to(server, client, pool_size=1)
    big = await transport.send(envelope("big@example.org", MESSAGE + (b"x" * 70 + b"\r\n") * 40))
    small = await transport.send(envelope("small@example.org"))
    await transport.close()
    assert (big.outcome, big.code) == (Outcome.failed, 552)
    assert "SIZE" in big.reply
    assert small.outcome is Outcome.sent
    assert server.commands.count("MAIL") == 1  # the big one never reached MAIL
    [received] = server.received
    [option] = received.mail_options  # declared: the message's size (the lean client counts
    declared = int(option.removeprefix("SIZE="))  # the dots it doubles too, RFC 1870 allows it)
    assert len(MESSAGE) <= declared <= len(MESSAGE) + MESSAGE.count(b"\r\n.")


async def test_an_over_long_reply_line_is_a_protocol_error(
    client: SMTPClient, serve: Serve
) -> None:
    server = serve()
    server.script("RCPT", "250 " + "x" * 100_000)
    transport = transport_to(server, client, pool_size=1)
    garbled = await transport.send(envelope("first@example.org"))
    after = await transport.send(envelope("second@example.org"))
    await transport.close()
    assert garbled.outcome is Outcome.deferred
    assert "long" in garbled.reply
    assert after.outcome is Outcome.sent


async def test_an_over_long_greeting_is_unavailable(client: SMTPClient, serve: Serve) -> None:
    server = serve()
    server.script("connect", "220 " + "x" * 100_000)
    transport = transport_to(server, client)
    result = await transport.send(envelope())
    await transport.close()
    assert result.outcome is Outcome.unavailable
    assert "long" in result.reply


async def test_an_internationalised_address(client: SMTPClient, serve: Serve) -> None:
    server = serve()
    transport = transport_to(server, client)
    result = await transport.send(envelope("山田@例え.jp"))
    await transport.close()
    assert result.outcome is Outcome.sent, result
    assert server.received[0].rcpt_tos == ("山田@例え.jp",)


# --- the circuit ------------------------------------------------------------------------------


async def test_a_relay_that_comes_back_closes_the_circuit_within_seconds(
    client: SMTPClient, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve()
    server.stop()
    transport = transport_to(server, client)
    caplog.set_level(logging.WARNING, logger="mailer.circuit")
    for n in range(5):  # one episode, however many envelopes it holds
        assert (await transport.send(envelope(f"r{n}@example.org"))).outcome is Outcome.unavailable
    await asyncio.sleep(1.0)  # probes fail meanwhile
    assert not transport.ready
    server.restart()
    for _ in range(60):
        if transport.ready:
            break
        await asyncio.sleep(0.1)
    assert transport.ready
    result = await transport.send(envelope("back@example.org"))
    await transport.close()
    assert result.outcome is Outcome.sent
    messages = [r.getMessage() for r in caplog.records if r.name == "mailer.circuit"]
    assert len(messages) == 2, messages
    assert "unavailable" in messages[0]
    assert "is back" in messages[1]
