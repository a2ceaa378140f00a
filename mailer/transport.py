"""Transports: how a finished message reaches an SMTP relay.

A ``Transport`` takes one envelope (return path, exactly one recipient, the message bytes)
and answers with a ``SendResult`` once the relay's reply is known. Failures are classified
by type, never by string: a 4xx reply, a timeout or a dropped connection is ``deferred``
(try again later); a 5xx reply is ``failed`` (do not retry). One envelope carries one
recipient, so an outcome always belongs to exactly one person.

``SMTPTransport`` keeps a small pool of persistent connections (``mailer.smtp``) to one relay;
``MemoryTransport`` records messages in a list for pure-logic tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from mailer.smtp import SMTPConnection, SMTPProtocolError, SMTPReplyError


class TLSMode(StrEnum):
    """How the connection to the relay is protected."""

    none = "none"  # plain SMTP: only for a relay on the same host or the capture server
    starttls = "starttls"  # upgrade after EHLO (port 587)
    tls = "tls"  # implicit TLS from the first byte (port 465)


@dataclass(frozen=True, slots=True)
class SMTPRelay:
    """Where and how to hand mail over. Defaults suit a local relay."""

    host: str = "127.0.0.1"
    port: int = 25
    tls: TLSMode = TLSMode.none
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    pool_size: int = 4
    local_hostname: str | None = None
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


class Outcome(StrEnum):
    sent = "sent"
    deferred = "deferred"
    failed = "failed"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One SMTP transaction: a return path, one recipient, the message as bytes.

    ``transparent`` is the composer's word that the message has CRLF line ends only and no
    line that begins with a dot, so it goes into SMTP DATA as it is, without the scans and
    the copy of dot-stuffing (RFC 5321 4.5.2). ``PreparedIssue.message`` guarantees both."""

    sender: str
    recipient: str
    message: bytes
    transparent: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    reply: str = ""


class Transport(Protocol):
    """Hands envelopes to a relay. Implementations must be safe to call concurrently."""

    async def send(self, envelope: Envelope) -> SendResult: ...

    async def close(self) -> None: ...


def _classify(code: int, reply: str) -> SendResult:
    outcome = Outcome.failed if 500 <= code < 600 else Outcome.deferred
    return SendResult(outcome, code, reply)


class SMTPTransport:
    """A pool of persistent connections to one relay.

    A connection that fails in any way is discarded, never reused; the next send opens a
    fresh one. A refused recipient or message resets the session (RSET), so a refusal does
    not poison the connection for the next envelope; a 421 closes it.
    """

    def __init__(self, relay: SMTPRelay) -> None:
        self.relay = relay
        self._idle: list[SMTPConnection] = []
        self._slots = asyncio.Semaphore(relay.pool_size)

    def _client(self) -> SMTPConnection:
        relay = self.relay
        return SMTPConnection(
            host=relay.host,
            port=relay.port,
            timeout=relay.timeout,
            implicit_tls=relay.tls is TLSMode.tls,
            starttls=relay.tls is TLSMode.starttls,
            username=relay.username,
            password=relay.password,
            local_hostname=relay.local_hostname or socket.gethostname(),
            tls_context=relay.tls_context,
        )

    async def _checkout(self) -> SMTPConnection:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        client = self._client()
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        return client

    async def send(self, envelope: Envelope) -> SendResult:
        async with self._slots:
            client: SMTPConnection | None = None
            try:
                client = await self._checkout()
            except SMTPReplyError as exc:  # the relay refused the session (AUTH, STARTTLS...):
                # the operator's problem, not the recipient's: keep the mail and retry later.
                return SendResult(Outcome.deferred, exc.code, f"relay session: {exc.message}")
            except (SMTPProtocolError, OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
                return SendResult(Outcome.deferred, None, f"{type(exc).__name__}: {exc}")
            try:
                reply = await client.send(
                    envelope.sender,
                    envelope.recipient,
                    envelope.message,
                    transparent=envelope.transparent,
                )
            except SMTPReplyError as exc:
                # 421 means the server is closing the channel: never reuse it.
                if exc.code == 421:
                    self._discard(client)
                else:
                    self._checkin(client)
                return _classify(exc.code, exc.message)
            except (SMTPProtocolError, OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
                self._discard(client)
                return SendResult(Outcome.deferred, None, f"{type(exc).__name__}: {exc}")
            self._checkin(client)
            return SendResult(Outcome.sent, reply.code, reply.message)

    def _checkin(self, client: SMTPConnection | None) -> None:
        if client is not None and client.is_connected:
            self._idle.append(client)

    @staticmethod
    def _discard(client: SMTPConnection | None) -> None:
        if client is not None:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(SMTPReplyError, SMTPProtocolError, OSError, TimeoutError):
                await client.quit()


@dataclass
class MemoryTransport:
    """Keeps every envelope in ``sent``; ``answer`` may decide outcomes for tests."""

    sent: list[Envelope] = field(default_factory=list)
    answer: Callable[[Envelope], SendResult] | None = None

    async def send(self, envelope: Envelope) -> SendResult:
        result = self.answer(envelope) if self.answer else SendResult(Outcome.sent, 250, "OK")
        if result.outcome is Outcome.sent:
            self.sent.append(envelope)
        return result

    async def close(self) -> None:
        return None
