"""The HTTP edge: what stands between a client's socket and the app.

Anonymous clients reach the app, so nothing they send may cost more than a bounded amount of
memory, time or connections:

- **Request headers** must arrive within ``MAILMAG_HEADER_TIMEOUT_SECONDS`` (10) of the
  connection opening or of the first byte after an answered request; otherwise the client
  gets ``408`` and the connection is closed. uvicorn has no such bound (its keep-alive timer
  runs only until the first byte), so ``HeaderTimeoutProtocol`` adds it to uvicorn's
  httptools protocol (it reads the timeout from the app it serves); ``uvicorn_options`` is
  what ``mailmag serve`` and the test server run with.
- **Request bodies** are limited by route class while they stream, before anything reads
  them whole: ``BodyGuard`` answers ``413`` as soon as a declared ``Content-Length``, or the
  bytes received so far, pass the class's limit (pages' forms ``MAILMAG_MAX_FORM_BYTES``, the
  JSON APIs ``MAILMAG_MAX_API_BYTES``, the feedback webhook 64 KB), and ``408`` when a body
  has not fully arrived within ``MAILMAG_BODY_TIMEOUT_SECONDS`` (30) of the app asking for
  it. The app then sees the client as gone (``http.disconnect``) and its own answer is
  dropped; the refusal closes the connection, so the rest of the body is never read.
- **Proxy headers** (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from the
  peers listed in ``MAILMAG_TRUSTED_PROXIES`` (none by default): a client's IP is what rate
  limits count and what consent evidence records, so a forged header must not set it.
  uvicorn's own handling (which trusts 127.0.0.1, or ``FORWARDED_ALLOW_IPS``) is off.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from subscriptions.settings import Settings

KIB = 1024
WEBHOOK_PATH = "/api/v1/feedback/webhook"


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The largest body, in bytes, of each class of route."""

    form: int = 128 * KIB  # pages: sign-up, preferences, contact (5,000 characters), staff
    api: int = 4 * KIB * KIB  # /api and /processor: an issue holds 2 x 200,000 characters
    webhook: int = 64 * KIB  # one feedback event

    def of(self, path: str) -> tuple[str, int]:
        """The class of the route at ``path`` and its limit."""
        if path == WEBHOOK_PATH:
            return "webhook", self.webhook
        if path.startswith(("/api/", "/processor/")):
            return "api", self.api
        return "form", self.form


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    limits: BodyLimits = BodyLimits()
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeConfig:
        return cls(
            limits=BodyLimits(form=settings.max_form_bytes, api=settings.max_api_bytes),
            body_timeout=settings.body_timeout_seconds,
            header_timeout=settings.header_timeout_seconds,
            trusted_proxies=settings.trusted_proxy_list,
        )


def install(app: FastAPI, settings: Settings) -> None:
    """Put the edge around ``app`` (outermost, so nothing inside sees an unbounded body)."""
    config = EdgeConfig.from_settings(settings)
    app.state.edge = config  # where HeaderTimeoutProtocol finds its timeout
    app.add_middleware(BodyGuard, config=config)
    if config.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(config.trusted_proxies))


def uvicorn_options() -> dict[str, Any]:
    """The options every web process is served with (``uvicorn.run`` or ``uvicorn.Config``).

    With several processes uvicorn's parent kills a child that does not answer its health
    check within ``timeout_worker_healthcheck``; a child answers only once it has imported
    mailmag, which took 4.5 s on a busy 2-core machine (the default 5 s killed children in a
    loop), hence 30. The protocol is named, not given, for the same reason: the options are
    sent to each child, and a class would be imported before it can answer."""
    return {
        "http": f"{__name__}:HeaderTimeoutProtocol",
        "proxy_headers": False,  # the app's edge decides whom to believe (install)
        "timeout_keep_alive": 5,
        "timeout_worker_healthcheck": 30,
    }


# --- bodies -------------------------------------------------------------------------------------


class BodyGuard:
    """Bounds each request body by its route class's size and by a read timeout, while it
    streams (a plain ASGI middleware: it sees every chunk as uvicorn hands it over)."""

    def __init__(self, app: ASGIApp, config: EdgeConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind, limit = self.config.limits.of(scope["path"])
        declared, has_body = _framing(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, _too_large(kind, limit))
            return
        loop = asyncio.get_running_loop()
        received = 0
        complete = False
        deadline: float | None = None
        answered = False  # by the guard: the app's own answer is dropped
        responding = False  # the app has begun its answer: too late for ours

        async def guarded_receive() -> Message:
            nonlocal received, complete, deadline, answered
            if answered:
                return {"type": "http.disconnect"}
            if complete:  # the body is in: what follows is waiting for a disconnect
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.config.body_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                if not responding:
                    answered = True
                    await _refuse(send, 408, _too_slow(kind, self.config.body_timeout))
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not responding:
                        answered = True
                        await _refuse(send, 413, _too_large(kind, limit))
                    return {"type": "http.disconnect"}
                complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responding
            if answered:
                return
            if message["type"] == "http.response.start":
                responding = True
                if has_body and not complete:
                    # Answered without reading the whole body (a form route sent JSON): close
                    # after the answer rather than read and discard the rest.
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared length of the body (None if not declared), and whether there is one."""
    declared, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            declared = int(text) if text.isascii() and text.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked or bool(declared)


def _too_large(kind: str, limit: int) -> tuple[str, str]:
    size = f"{limit // KIB:,} KiB" if limit >= KIB else f"{limit} bytes"
    if kind == "form":
        return "text", (
            f"The form is too large: at most {size} can be sent.\n"
            f"送信された内容が大きすぎます。上限は {size} です。\n"
        )
    return "json", f"request body too large: at most {size} on this route"


def _too_slow(kind: str, seconds: float) -> tuple[str, str]:
    if kind == "form":
        return "text", (
            f"The form did not arrive within {seconds:g} seconds. Please send it again.\n"
            f"{seconds:g} 秒以内に送信が完了しませんでした。もう一度お送りください。\n"
        )
    return "json", f"request body did not arrive within {seconds:g} seconds"


async def _refuse(send: Send, status: int, answer: tuple[str, str]) -> None:
    """Answer ``status`` and close the connection: the rest of the body is never read."""
    form, text = answer
    if form == "json":
        body, kind = json.dumps({"detail": text}).encode(), b"application/json"
    else:
        body, kind = text.encode(), b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- headers ------------------------------------------------------------------------------------


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the time a request's headers take.

    The clock starts when the connection opens, and when bytes arrive while no request is
    being answered (the next request on a kept-alive connection, or the rest of a body
    nobody reads); it stops when a request's headers are complete. When it runs out, an idle
    or half-sent connection gets ``408`` and is closed; one whose earlier request is still
    being answered is closed after that answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        edge = getattr(getattr(self.app, "state", None), "edge", None)  # set by ``install``
        self.header_timeout = edge.header_timeout if edge else EdgeConfig().header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._answering():
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a pipelined request behind one being answered

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._answering():
            self.cycle.keep_alive = False  # close once the request in hand is answered
            return
        body = f"request headers did not arrive within {self.header_timeout:g} seconds\n".encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.transport.close()
