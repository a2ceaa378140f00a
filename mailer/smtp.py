"""A lean SMTP client for the sending hot path: one connection, one transaction at a time.

Why not aiosmtplib here: per message it re-parses both addresses with ``email.utils`` and
runs two regular expressions over the whole message (line endings, dot-stuffing); at a 20 KB
newsletter that is most of the CPU a message costs. This client trusts what the composer
guarantees (CRLF line endings, addresses already validated), stuffs dots with one
``bytes.replace``, and uses PIPELINING (RFC 2920) when the server offers it, so MAIL, RCPT and
DATA cost one round trip instead of three. System mail goes through aiosmtplib
(``mailer.aiosmtplib_client``), and so may issues, by setting; both keep the same rules:

- ESMTP (RFC 5321), falling back to HELO when EHLO is refused; STARTTLS (RFC 3207) or
  implicit TLS (RFC 8314), the certificate always verified; AUTH PLAIN or LOGIN (RFC 4954),
  and only over an encrypted session (``InsecureRelay`` otherwise, before a byte of it is
  written); SMTPUTF8 (RFC 6531); SIZE (RFC 1870): the size is declared in MAIL FROM, and a
  message over the relay's limit is refused before MAIL (``MessageTooLarge``).
- Every reply is read and checked, a line at most ``MAX_LINE`` bytes and a reply at most
  ``MAX_REPLY_LINES`` lines (``SMTPProtocolError`` past either); every write is drained.
  A connection that misbehaves raises and must be thrown away by the caller.
- ``data_sent`` tells whether the last transaction wrote its message: a connection lost
  before that delivered nothing and the message may go again at once on another.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass, field

from mailer.errors import (
    InsecureRelay,
    MessageTooLarge,
    RelayUnsuitable,
    SMTPProtocolError,
    SMTPReplyError,
)

__all__ = [
    "MAX_LINE",
    "MAX_REPLY_LINES",
    "NO_CREDENTIALS_IN_CLEAR",
    "Reply",
    "SMTPConnection",
    "SMTPProtocolError",
    "SMTPReplyError",
    "SessionOptions",
    "make_transparent",
]

MAX_REPLY_LINES = 100
# RFC 5321 4.5.3.1.5 allows 512 octets a reply line; real EHLO lines run longer, so 8 KiB
# (aiosmtplib's bound too). The stream buffers at most this much of one line.
MAX_LINE = 8192
_BARE_LF = re.compile(rb"\r\n|\r|\n")


def make_transparent(message: bytes) -> bytes:
    """``message`` with CRLF line ends and its leading dots doubled (RFC 5321 4.5.2)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _BARE_LF.sub(b"\r\n", message)  # a bare LF or CR: not our composer's
    # Most messages have no line starting with a dot: a search is a third of a copy.
    body = message.replace(b"\r\n.", b"\r\n..") if b"\r\n." in message else message
    return b"." + body if body.startswith(b".") else body


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    message: str


@dataclass
class SessionOptions:
    """How a session to the relay is opened: what every client (this one, aiosmtplib's) is
    told. ``tls_context`` verifies the relay (the system's store when none is given)."""

    host: str
    port: int
    timeout: float = 30.0
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_hostname: str = "localhost"
    tls_context: ssl.SSLContext | None = field(default=None, repr=False)


NO_CREDENTIALS_IN_CLEAR = (
    "refusing to send the relay's credentials over an unencrypted session "
    "(use STARTTLS or implicit TLS)"
)


@dataclass
class SMTPConnection(SessionOptions):
    extensions: dict[str, str] = field(default_factory=dict)
    data_sent: bool = False  # the last transaction wrote its message (it may have arrived)
    _encrypted: bool = field(default=False, repr=False)
    _pipelining: bool = field(default=False, repr=False)
    _declares_size: bool = field(default=False, repr=False)  # the relay speaks SIZE
    _size_limit: int = field(default=0, repr=False)  # 0: the relay announced no limit
    _reader: asyncio.StreamReader | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    @property
    def is_connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # --- the session ---------------------------------------------------------------------------

    async def connect(self) -> None:
        context = None
        if self.implicit_tls or self.starttls:
            context = self.tls_context or ssl.create_default_context()
        async with asyncio.timeout(self.timeout):
            self._reader, self._writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=context if self.implicit_tls else None,
                server_hostname=self.host if self.implicit_tls else None,
                limit=MAX_LINE,
            )
            self._encrypted = self.implicit_tls
            await self._expect(await self._read_reply(), 220)
            await self._hello()
            if self.starttls:
                if "STARTTLS" not in self.extensions:
                    raise InsecureRelay("the relay does not offer STARTTLS")
                await self._command(b"STARTTLS\r\n", 220)
                assert self._writer is not None
                assert context is not None
                await self._writer.start_tls(context, server_hostname=self.host)
                self._encrypted = True
                await self._hello()
            if self.username is not None:
                await self._login(self.username, self.password or "")

    async def _hello(self) -> None:
        """EHLO, or HELO when the relay refuses EHLO (RFC 5321 3.2): no extensions then."""
        await self._write(f"EHLO {self.local_hostname}\r\n".encode())
        reply = await self._read_reply(lines=True)
        self.extensions = {}
        if 500 <= reply.code < 600:
            await self._command(f"HELO {self.local_hostname}\r\n".encode(), 250)
        else:
            await self._expect(reply, 250)
            for line in reply.message.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params
        self._pipelining = "PIPELINING" in self.extensions
        self._declares_size = "SIZE" in self.extensions
        size = self.extensions.get("SIZE", "").strip()
        self._size_limit = int(size) if size.isascii() and size.isdigit() else 0

    async def _login(self, username: str, password: str) -> None:
        if not self._encrypted:
            raise InsecureRelay(NO_CREDENTIALS_IN_CLEAR)
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            await self._command(f"AUTH PLAIN {token}\r\n".encode(), 235)
        elif "LOGIN" in mechanisms:
            await self._command(b"AUTH LOGIN\r\n", 334)
            await self._command(base64.b64encode(username.encode()) + b"\r\n", 334)
            await self._command(base64.b64encode(password.encode()) + b"\r\n", 235)
        else:
            offered = " ".join(mechanisms) or "none"
            raise RelayUnsuitable(f"the relay offers no AUTH PLAIN or LOGIN (offered: {offered})")

    async def send(
        self, sender: str, recipient: str, message: bytes, *, transparent: bool = False
    ) -> Reply:
        """One transaction for one recipient; returns the final reply (2xx), or raises
        ``SMTPReplyError`` with the refusal (the session is reset and stays usable unless
        the code is 421), or ``MessageTooLarge`` before MAIL. ``transparent``: the caller
        guarantees CRLF line ends only and no line that begins with a dot, and the message
        is sent as it is."""
        self.data_sent = False
        utf8 = not (sender.isascii() and recipient.isascii())
        if utf8 and "SMTPUTF8" not in self.extensions:
            raise SMTPReplyError(553, "the relay does not accept internationalised addresses")
        body = message if transparent else make_transparent(message)
        if self._size_limit and len(body) > self._size_limit:
            raise MessageTooLarge(len(body), self._size_limit)
        size = f" SIZE={len(body)}" if self._declares_size else ""
        mail = f"MAIL FROM:<{sender}>{size}{' SMTPUTF8' if utf8 else ''}\r\n".encode()
        rcpt = f"RCPT TO:<{recipient}>\r\n".encode()
        async with asyncio.timeout(self.timeout):
            if self._pipelining:
                await self._write(mail + rcpt + b"DATA\r\n")
                replies = [await self._read_reply() for _ in range(3)]
            else:
                replies = []
                for command in (mail, rcpt, b"DATA\r\n"):
                    await self._write(command)
                    replies.append(reply := await self._read_reply())
                    if not 200 <= reply.code < 400:
                        break
            refusal = next((r for r in replies[:2] if not 200 <= r.code < 300), None)
            if refusal is None and replies[-1].code != 354:
                refusal = replies[-1]
            if refusal is not None:
                if replies[-1].code == 354:  # DATA was accepted though RCPT was not: end it
                    await self._write(b".\r\n")
                    await self._read_reply()
                await self._reset(refusal)
                raise SMTPReplyError(refusal.code, refusal.message)
            await self._write_data(body)
            final = await self._read_reply()
            if not 200 <= final.code < 300:
                await self._reset(final)
                raise SMTPReplyError(final.code, final.message)
            return final

    async def _reset(self, refusal: Reply) -> None:
        if refusal.code == 421:
            return  # the server is closing the channel
        await self._write(b"RSET\r\n")
        await self._read_reply()

    async def quit(self) -> None:
        if self.is_connected:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._command(b"QUIT\r\n", 221)
            finally:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._reader = None

    # --- the wire ------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionError("not connected")
        self._writer.write(data)
        await self._writer.drain()

    async def _command(self, command: bytes, code: int) -> Reply:
        await self._write(command)
        reply = await self._read_reply()
        await self._expect(reply, code)
        return reply

    async def _write_data(self, body: bytes) -> None:
        """The message, already transparent, and the end-of-data mark."""
        if self._writer is None:
            raise ConnectionError("not connected")
        self.data_sent = True
        # One system call for both (the loop's transport writes a list with writev).
        self._writer.writelines((body, b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
        await self._writer.drain()

    async def _read_reply(self, *, lines: bool = False) -> Reply:
        if self._reader is None:
            raise ConnectionError("not connected")
        texts: list[str] = []
        for _ in range(MAX_REPLY_LINES):
            try:
                raw = await self._reader.readline()
            except ValueError:  # the stream's limit: a line longer than MAX_LINE
                raise SMTPProtocolError(f"a reply line longer than {MAX_LINE} bytes") from None
            if not raw.endswith(b"\n"):
                raise ConnectionResetError("the relay closed the connection")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            code, mark = line[:3], line[3:4]
            # ASCII digits: str.isdigit() is also true of "²", which int() refuses.
            if not (len(code) == 3 and code.isascii() and code.isdigit()) or mark not in " -":
                raise SMTPProtocolError(f"not an SMTP reply: {line[:80]!r}")
            texts.append(line[4:])
            if mark != "-":
                return Reply(int(code), "\n".join(texts) if lines else " ".join(texts))
        raise SMTPProtocolError("an endless reply")

    @staticmethod
    async def _expect(reply: Reply, code: int) -> None:
        if reply.code != code:
            raise SMTPReplyError(reply.code, reply.message)
