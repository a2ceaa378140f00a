"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that records what it receives and
can be told to answer with chosen errors, in the manner of Mailman's testing MTA.

Faults are scripted per recipient (``refuse``: reply to RCPT TO) or for the next DATA
commands (``fail_data``, ``drop_data``), so a test states exactly which transaction fails.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from mailer.capture import LOOPBACK, free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

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
        with self.sink.lock:
            self.sink.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Ok: queued"


class SMTPSink:
    """aiosmtpd on a free loopback port; ``received`` holds every accepted message."""

    def __init__(self, *, pipelining: bool = False, password: str | None = None) -> None:
        self.pipelining = pipelining
        self.port = free_port()
        self.host = LOOPBACK
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_script: deque[str] = deque()
        self.delay = 0.0  # seconds to wait before accepting each message
        auth: dict[str, Any] = {}
        if password is not None:

            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
                ok = getattr(data, "password", b"") == password.encode()
                return AuthResult(success=ok, handled=False)

            auth = {"authenticator": check, "auth_require_tls": False}
        self._controller = Controller(_Handler(self), hostname=LOOPBACK, port=self.port, **auth)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

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
