"""Transports: how a finished message reaches an SMTP relay.

A ``Transport`` takes one envelope (return path, exactly one recipient, the message bytes)
and answers with a ``SendResult`` once the relay's reply is known. Failures are classified
by type, never by string, and per recipient: a 4xx reply, a timeout or a connection lost
during the transaction is ``deferred`` (try again later); a 5xx reply is ``failed`` (do not
retry). A relay that cannot even open a session is ``unavailable``: nothing was attempted
for that recipient, and the relay's circuit (``mailer.circuit``) is open, so ``ready`` is
false until a probe gets a session again. One envelope carries one recipient, so an outcome
always belongs to exactly one person.

``SMTPTransport`` keeps a small pool of persistent sessions to one relay, spoken by the lean
client (``mailer.smtp``, the issue hot path) or by aiosmtplib (``mailer.aiosmtplib_client``,
system mail, and issues for a relay the lean one does not suit), as ``SMTPRelay.client``
says: the pool, the classification and the circuit are the same for both. A connection that
dies while idle (the relay closed it, or restarted) is found out before the message was
written, and the message goes at once over a fresh one. ``MemoryTransport`` records
messages in a list for pure-logic tests.
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

from mailer.aiosmtplib_client import AiosmtplibConnection
from mailer.circuit import RelayCircuit
from mailer.errors import MessageTooLarge, SMTPReplyError, TransportError
from mailer.smtp import Reply, SMTPConnection


class TLSMode(StrEnum):
    """How the connection to the relay is protected."""

    none = "none"  # plain SMTP: only for a relay on the same host or the capture server
    starttls = "starttls"  # upgrade after EHLO (port 587)
    tls = "tls"  # implicit TLS from the first byte (port 465)


class SMTPClient(StrEnum):
    """Which SMTP client speaks to the relay."""

    lean = "lean"  # mailer.smtp: the issue hot path's, several times cheaper a message
    aiosmtplib = "aiosmtplib"  # the field's library: system mail, and relays lean does not suit


@dataclass(frozen=True, slots=True)
class SMTPRelay:
    """Where and how to hand mail over. Defaults suit a local relay.

    ``ca_file``: the certificates that the relay's must chain to (PEM), instead of the
    system's; ``tls_context`` (tests) replaces the whole context."""

    host: str = "127.0.0.1"
    port: int = 25
    tls: TLSMode = TLSMode.none
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    pool_size: int = 4
    local_hostname: str | None = None
    client: SMTPClient = SMTPClient.lean
    ca_file: str | None = None
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class Outcome(StrEnum):
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    unavailable = "unavailable"  # the relay took no session: nothing was tried, try again soon


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
    """Hands envelopes to a relay. Implementations must be safe to call concurrently.

    ``ready`` is false while the relay is known to be away (its circuit is open): a caller
    hands it no work then, and anything it does hand over comes back ``unavailable``."""

    @property
    def ready(self) -> bool: ...

    async def send(self, envelope: Envelope) -> SendResult: ...

    async def close(self) -> None: ...


class RelaySession(Protocol):
    """One SMTP session, as the pool drives it (``SMTPConnection``, ``AiosmtplibConnection``)."""

    data_sent: bool

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def send(
        self, sender: str, recipient: str, message: bytes, *, transparent: bool = False
    ) -> Reply: ...

    async def quit(self) -> None: ...

    def close(self) -> None: ...


# What a session may raise besides a reply: the engine's own errors and the network's.
_LOST = (TransportError, OSError, TimeoutError, EOFError)


def _classify(code: int, reply: str) -> SendResult:
    outcome = Outcome.failed if 500 <= code < 600 else Outcome.deferred
    return SendResult(outcome, code, reply)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPReplyError):
        return f"{exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class SMTPTransport:
    """A pool of persistent sessions to one relay, with the relay's circuit.

    A session that fails in any way is discarded, never reused; the next send opens a fresh
    one. A refused recipient or message resets the session (RSET), so a refusal does not
    poison the connection for the next envelope; a 421 closes it.
    """

    def __init__(self, relay: SMTPRelay) -> None:
        self.relay = relay
        self.circuit = RelayCircuit(relay.name, self._probe)
        self._idle: list[RelaySession] = []
        self._slots = asyncio.Semaphore(relay.pool_size)
        self._context: ssl.SSLContext | None = relay.tls_context
        self._hostname = relay.local_hostname

    @property
    def ready(self) -> bool:
        return self.circuit.closed

    async def _setup(self) -> None:
        """What a first session needs, built once and off the loop (loading CA files reads
        the disk and parses certificates; ``getfqdn`` may ask DNS)."""
        relay = self.relay
        if self._context is None and relay.tls is not TLSMode.none:
            self._context = await asyncio.to_thread(
                ssl.create_default_context, cafile=relay.ca_file
            )
        if self._hostname is None:
            self._hostname = await asyncio.to_thread(socket.getfqdn)

    def _session(self) -> RelaySession:
        relay = self.relay
        kind = AiosmtplibConnection if relay.client is SMTPClient.aiosmtplib else SMTPConnection
        return kind(
            host=relay.host,
            port=relay.port,
            timeout=relay.timeout,
            implicit_tls=relay.tls is TLSMode.tls,
            starttls=relay.tls is TLSMode.starttls,
            username=relay.username,
            password=relay.password,
            local_hostname=self._hostname or "localhost",
            tls_context=self._context,
        )

    async def _open(self) -> RelaySession:
        if self._hostname is None or (self._context is None and self.relay.tls is not TLSMode.none):
            await self._setup()
        session = self._session()
        try:
            await session.connect()
        except BaseException:
            session.close()
            raise
        return session

    async def _probe(self) -> None:
        """The circuit's probe: a session that opens is kept for the next envelope."""
        session = await self._open()
        if len(self._idle) < self.relay.pool_size:
            self._idle.append(session)
        else:
            with contextlib.suppress(*_LOST):
                await session.quit()

    def _unavailable(self, code: int | None = None) -> SendResult:
        return SendResult(Outcome.unavailable, code, f"relay unavailable: {self.circuit.reason}")

    def _checkout(self) -> RelaySession | None:
        while self._idle:
            session = self._idle.pop()
            if session.is_connected:
                return session
        return None

    def _checkin(self, session: RelaySession) -> None:
        if session.is_connected:
            self._idle.append(session)

    async def send(self, envelope: Envelope) -> SendResult:
        if not self.circuit.closed:
            return self._unavailable()
        async with self._slots:
            fresh = False
            while True:
                if not self.circuit.closed:  # it opened while this envelope waited its turn
                    return self._unavailable()
                session = None if fresh else self._checkout()
                reused = session is not None
                if session is None:
                    try:
                        session = await self._open()
                    except _LOST as exc:  # no session: the relay's failure, not the recipient's
                        self.circuit.trip(_describe(exc))
                        return self._unavailable(
                            exc.code if isinstance(exc, TransportError) else None
                        )
                try:
                    reply = await session.send(
                        envelope.sender,
                        envelope.recipient,
                        envelope.message,
                        transparent=envelope.transparent,
                    )
                except MessageTooLarge as exc:
                    self._checkin(session)
                    return SendResult(Outcome.failed, exc.code, f"5.3.4 {exc} (not sent)")
                except SMTPReplyError as exc:
                    if exc.code != 421:
                        self._checkin(session)
                        return _classify(exc.code, exc.message)
                    session.close()  # the server is closing the channel: never reuse it
                    if reused and not session.data_sent:
                        fresh = True  # it timed the idle session out: nothing was sent
                        continue
                    return _classify(exc.code, exc.message)
                except _LOST as exc:
                    session.close()
                    if reused and not session.data_sent:
                        fresh = True  # it died while idle, before the message: send it anew
                        continue
                    return SendResult(Outcome.deferred, None, _describe(exc))
                self._checkin(session)
                return SendResult(Outcome.sent, reply.code, reply.message)

    async def close(self) -> None:
        await self.circuit.close()
        idle, self._idle = self._idle, []
        for session in idle:
            with contextlib.suppress(*_LOST):
                await session.quit()


@dataclass
class MemoryTransport:
    """Keeps every envelope in ``sent``; ``answer`` may decide outcomes for tests."""

    sent: list[Envelope] = field(default_factory=list)
    answer: Callable[[Envelope], SendResult] | None = None
    ready: bool = True

    async def send(self, envelope: Envelope) -> SendResult:
        result = self.answer(envelope) if self.answer else SendResult(Outcome.sent, 250, "OK")
        if result.outcome is Outcome.sent:
            self.sent.append(envelope)
        return result

    async def close(self) -> None:
        return None
