"""An SMTP session through aiosmtplib, for system mail and for relays the lean client does not
suit: the same session interface as ``mailer.smtp.SMTPConnection``, which the pooled
transport (``mailer.transport``) drives, so both clients keep the same rules.

aiosmtplib is the field's maintained asyncio client: it normalises line ends and dot-stuffs
every message itself, parses the addresses, and speaks the odd dialects relays have. That
costs CPU per message, which system mail (a few a minute) can spend and the issue hot path
cannot (``mailer.smtp`` says why). What mailmag adds on top: EHLO falls back to HELO on a 5xx,
AUTH (PLAIN, else LOGIN) only over an encrypted session, the message's size checked against
the relay's SIZE before MAIL, and aiosmtplib's errors translated once, here, into the sending
engine's tree (``mailer.errors``); its connection errors are ``ConnectionError``\\ s and its
timeouts ``TimeoutError``\\ s already.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass, field
from typing import NoReturn

import aiosmtplib

from mailer.errors import (
    InsecureRelay,
    MessageTooLarge,
    RelayUnsuitable,
    SMTPProtocolError,
    SMTPReplyError,
)
from mailer.smtp import NO_CREDENTIALS_IN_CLEAR, Reply, SessionOptions


def _translate(exc: aiosmtplib.SMTPException) -> NoReturn:
    """Raise the engine's error for one of aiosmtplib's (connection losses and timeouts are
    left as they are: they are ``OSError`` and ``TimeoutError`` already)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code < 0:  # aiosmtplib's own code for "not a reply", e.g. a line too long
            raise SMTPProtocolError(exc.message) from exc
        raise SMTPReplyError(exc.code, exc.message) from exc
    if isinstance(exc, ConnectionError | TimeoutError):
        raise exc
    raise RelayUnsuitable(str(exc)) from exc


@dataclass
class AiosmtplibConnection(SessionOptions):
    data_sent: bool = False  # the last transaction got as far as DATA (it may have arrived)
    _smtp: aiosmtplib.SMTP | None = field(default=None, repr=False)

    @property
    def is_connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    @property
    def extensions(self) -> dict[str, str]:
        """The relay's EHLO keywords, upper-cased as ``SMTPConnection.extensions`` are."""
        if self._smtp is None:
            return {}
        return {k.upper(): v for k, v in self._smtp.esmtp_extensions.items()}

    async def connect(self) -> None:
        context = None
        if self.implicit_tls or self.starttls:
            context = self.tls_context or ssl.create_default_context()
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            use_tls=self.implicit_tls,
            start_tls=False,  # done below, so that a relay without it is refused by name
            tls_context=context,
            local_hostname=self.local_hostname,
        )
        self._smtp = smtp
        try:
            await smtp.connect()
            await self._hello(smtp)
            if self.starttls:
                if not smtp.supports_extension("starttls"):
                    raise InsecureRelay("the relay does not offer STARTTLS")
                await smtp.starttls()
                await self._hello(smtp)
            if self.username is not None:
                await self._login(smtp, self.username, self.password or "")
        except aiosmtplib.SMTPException as exc:
            _translate(exc)

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if not 500 <= exc.code < 600 or not smtp.is_connected:
                raise
            await smtp.helo()

    @staticmethod
    async def _login(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
        if smtp.get_transport_info("sslcontext") is None:
            raise InsecureRelay(NO_CREDENTIALS_IN_CLEAR)
        mechanisms = smtp.server_auth_methods
        if "plain" in mechanisms:
            await smtp.auth_plain(username, password)
        elif "login" in mechanisms:
            await smtp.auth_login(username, password)
        else:
            offered = " ".join(mechanisms).upper() or "none"
            raise RelayUnsuitable(f"the relay offers no AUTH PLAIN or LOGIN (offered: {offered})")

    async def send(
        self, sender: str, recipient: str, message: bytes, *, transparent: bool = False
    ) -> Reply:
        """One transaction for one recipient, as ``SMTPConnection.send`` (``transparent`` is
        accepted for the interface: aiosmtplib makes every message transparent itself)."""
        self.data_sent = False
        smtp = self._smtp
        if smtp is None or not smtp.is_connected:
            raise ConnectionResetError("not connected")
        utf8 = not (sender.isascii() and recipient.isascii())
        if utf8 and not smtp.supports_extension("smtputf8"):
            raise SMTPReplyError(553, "the relay does not accept internationalised addresses")
        options: list[str] = []
        if smtp.supports_extension("size"):
            limit = smtp.esmtp_extensions["size"].strip()
            if limit.isascii() and limit.isdigit() and 0 < int(limit) < len(message):
                raise MessageTooLarge(len(message), int(limit))
            options.append(f"SIZE={len(message)}")
        if utf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
            await smtp.rcpt(recipient, encoding=encoding)
            self.data_sent = True  # from DATA on, a lost connection may have delivered it
            response = await smtp.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code != 421 and smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await smtp.rset()
            _translate(exc)
        return Reply(response.code, response.message)

    async def quit(self) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            try:
                await self._smtp.quit()
            except aiosmtplib.SMTPException as exc:
                _translate(exc)
            finally:
                self.close()

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None
