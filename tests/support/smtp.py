"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that records what it receives and
can be told to answer with chosen errors, in the manner of Mailman's testing MTA.

Faults are scripted per recipient (``refuse``: reply to RCPT TO), for the next DATA
commands (``fail_data``, ``drop_data``), or for any step of the session (``script``: the
greeting, EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, the DATA command), so a test states exactly
which transaction fails. It speaks STARTTLS or implicit TLS with a given certificate, AUTH
PLAIN and LOGIN, and SIZE, and can be stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

from mailer.capture import LOOPBACK, free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    tls: bool = False
    login: str | None = None

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    async def handle_EHLO(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd reads commands as they come: pipelining works
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.sink.lock:
            reply = self.sink.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook name)
        with self.sink.lock:
            action = self.sink.data_script.popleft() if self.sink.data_script else None
        if action == "drop":
            server.transport.close()
            return "421 dropped"  # never reaches the client: the connection is gone
        if action is not None:
            return action
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        with self.sink.lock:
            self.sink.received.append(
                Received(
                    envelope.mail_from,
                    tuple(envelope.rcpt_tos),
                    envelope.original_content,
                    tuple(envelope.mail_options),
                    # implicit TLS: aiosmtpd sets session.ssl only for STARTTLS
                    session.ssl is not None
                    or server.transport.get_extra_info("sslcontext") is not None,
                    login.decode() if isinstance(login, bytes) else login,
                )
            )
        return "250 2.0.0 Ok: queued"


STEPS = ("connect", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA")


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server, answering a step as the sink's script says (``"drop"`` closes the
    connection instead of answering)."""

    def __init__(self, handler: Any, sink: SMTPSink, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink

    async def _handle_client(self) -> None:
        if await self._scripted("connect"):
            return
        await super()._handle_client()

    async def _scripted(self, step: str) -> bool:
        with self.sink.lock:
            self.sink.commands.append(step)
            script = self.sink.scripts.get(step)
            action = script.popleft() if script else None
        if action is None:
            return False
        if action != "drop":
            await self.push(action)
        if action == "drop" or step == "connect":
            assert self.transport is not None
            self.transport.close()
        return True

    async def smtp_EHLO(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("EHLO"):
            await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("HELO"):
            await super().smtp_HELO(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("STARTTLS"):
            await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("AUTH"):
            await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("MAIL"):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("RCPT"):
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if not await self._scripted("DATA"):
            await super().smtp_DATA(arg)


class _Controller(Controller):
    def __init__(self, sink: SMTPSink, **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(_Handler(sink), **kwargs)

    def factory(self) -> SMTP:
        return _ScriptedSMTP(self.handler, self.sink, **self.SMTP_kwargs)


class SMTPSink:
    """aiosmtpd on a free loopback port; ``received`` holds every accepted message."""

    def __init__(
        self,
        *,
        pipelining: bool = False,
        password: str | None = None,
        tls: str = "none",
        context: ssl.SSLContext | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        size_limit: int | None = None,
        port: int | None = None,
    ) -> None:
        """``tls``: "none", "starttls" (offered with ``context``) or "tls" (implicit, with
        ``context``); ``password``: AUTH with it is required, over TLS when TLS is offered;
        ``mechanisms``: the AUTH mechanisms offered; ``size_limit``: the SIZE announced."""
        self.pipelining = pipelining
        self.port = port or free_port()
        self.host = LOOPBACK
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_script: deque[str] = deque()
        self.scripts: dict[str, deque[str]] = {}
        self.commands: list[str] = []  # every step the server saw, in order
        self.delay = 0.0  # seconds to wait before accepting each message
        options: dict[str, Any] = {"hostname": LOOPBACK}
        if size_limit is not None:
            options["data_size_limit"] = size_limit
        if tls == "starttls":
            options["tls_context"] = context
        elif tls == "tls":
            options["ssl_context"] = context
        if password is not None:

            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
                ok = getattr(data, "password", b"") == password.encode()
                return AuthResult(success=ok, handled=False, auth_data=data)

            options |= {
                "authenticator": check,
                # aiosmtpd counts only STARTTLS as TLS; an implicit TLS session is one too
                "auth_require_tls": tls == "starttls",
                "auth_exclude_mechanism": [m for m in ("PLAIN", "LOGIN") if m not in mechanisms],
            }
        self._options = options
        self._controller: Controller = _Controller(self, port=self.port, **options)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def restart(self) -> None:
        """Start again on the same port, after ``stop`` (a relay that comes back)."""
        self._controller = _Controller(self, port=self.port, **self._options)
        self._controller.start()

    def script(self, step: str, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` of ``step`` (one of ``STEPS``) with ``reply``, or close
        the connection for ``"drop"``; "connect" answers the greeting and closes."""
        assert step in STEPS
        with self.lock:
            self.scripts.setdefault(step, deque()).extend([reply] * times)

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO for ``address`` with ``reply`` (for example ``"550 5.1.1 no"``)."""
        with self.lock:
            self.rcpt_replies[address.lower()] = reply

    def fail_data(self, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` DATA commands with ``reply``."""
        with self.lock:
            self.data_script.extend([reply] * times)

    def drop_data(self, times: int = 1) -> None:
        """Close the connection instead of answering the next ``times`` DATA commands."""
        with self.lock:
            self.data_script.extend(["drop"] * times)

    def messages_to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [r.message() for r in self.received if address in r.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"expected {count} messages, got {len(self.received)}")
