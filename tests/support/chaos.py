"""An SMTP server that misbehaves at random (aiosmtpd on 127.0.0.1), counting what it did.

Faults, each with its own probability, drawn from one seeded generator:

- ``connect_421``: a new connection is greeted with 421 and closed;
- ``rcpt_451``, ``rcpt_452``, ``rcpt_550``: RCPT TO is answered with that code;
- ``drop_mid_data``: DATA gets its 354, then the connection closes while the message is sent;
- ``data_451``: the whole message is read, then answered 451;
- ``drop_after_data``: the whole message is read and kept, then the connection closes with
  no reply (the client cannot know it arrived: a duplicate may follow);
- ``stall``: the whole message is read and kept, the reply comes after ``stall_seconds``
  (longer than the client waits: a duplicate may follow).

Replies the server sends for commands out of order or malformed (500, 501, 503) are counted
as protocol errors of the client.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from mailer.capture import LOOPBACK, free_port

PROBABILITIES = {
    "connect_421": 0.02,
    "rcpt_451": 0.02,
    "rcpt_452": 0.01,
    "rcpt_550": 0.01,
    "drop_mid_data": 0.01,
    "data_451": 0.02,
    "drop_after_data": 0.01,
    "stall": 0.003,
}
REPLIES = {
    "rcpt_451": "451 4.3.0 Temporary local problem",
    "rcpt_452": "452 4.2.2 Mailbox full",
    "rcpt_550": "550 5.1.1 No such user here",
    "data_451": "451 4.3.0 Try again later",
}
DUPLICATING = ("drop_after_data", "stall")  # the message arrived but the client cannot know


class ChaosSink:
    def __init__(self, seed: int = 20261128, stall_seconds: float = 2.5) -> None:
        self.host, self.port = LOOPBACK, free_port()
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.events: Counter[str] = Counter()
        self.refused: dict[str, str] = {}  # recipient -> the 5xx reply it got
        self.received: Counter[str] = Counter()  # recipient -> messages kept
        self.protocol_errors: list[str] = []
        self._controller = _ChaosController(self)

    def roll(self, fault: str) -> bool:
        with self.lock:
            hit = self.random.random() < PROBABILITIES[fault]
            if hit:
                self.events[fault] += 1
            return hit

    def keep(self, recipients: list[str]) -> None:
        with self.lock:
            self.received.update(r.lower() for r in recipients)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


class _ChaosSMTP(SMTP):
    def __init__(self, handler: Any, sink: ChaosSink, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink

    async def _handle_client(self) -> None:
        if self.sink.roll("connect_421"):
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        if text[:3] in ("500", "501", "503"):
            with self.sink.lock:
                self.sink.protocol_errors.append(text)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        if self.envelope is not None and self.envelope.rcpt_tos and self.sink.roll("drop_mid_data"):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, sink: ChaosSink) -> None:
        self.sink = sink

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        for fault in ("rcpt_451", "rcpt_452", "rcpt_550"):
            if self.sink.roll(fault):
                if fault == "rcpt_550":
                    with self.sink.lock:
                        self.sink.refused[address.lower()] = REPLIES[fault]
                return REPLIES[fault]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook name)
        if self.sink.roll("data_451"):
            return REPLIES["data_451"]
        self.sink.keep(envelope.rcpt_tos)
        if self.sink.roll("drop_after_data"):
            server.transport.close()
            return "421 dropped"  # never reaches the client: the connection is gone
        if self.sink.roll("stall"):
            await asyncio.sleep(self.sink.stall_seconds)
        return "250 2.0.0 Ok: queued"


class _ChaosController(Controller):
    def __init__(self, sink: ChaosSink) -> None:
        self.sink = sink
        super().__init__(_Handler(sink), hostname=LOOPBACK, port=sink.port)

    def factory(self) -> SMTP:
        return _ChaosSMTP(self.handler, self.sink, **self.SMTP_kwargs)
