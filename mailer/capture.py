"""A local capture SMTP server for the embedded default, in the manner of Mailpit.

With no relay configured, ``mailmag serve`` hands outgoing mail to this server on
127.0.0.1 instead of the internet. Each message is written to a Maildir (fsynced by the
stdlib's ``mailbox`` writer before the 250 reply) with its envelope in ``X-Envelope-*``
headers, and the web app lists it at ``/_mail``, so a new user sees exactly what
subscribers would receive.
"""

from __future__ import annotations

import mailbox
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (for tests and the capture server's port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _MaildirHandler:
    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook name)
        prefix = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        self.maildir.add(prefix + envelope.original_content)
        return "250 Message captured"


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    key: str
    received_at: datetime
    envelope_to: str
    subject: str
    message: EmailMessage


class CaptureServer:
    """aiosmtpd on loopback, writing every message it accepts into ``directory``."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.directory = directory
        self.maildir = mailbox.Maildir(directory, create=True)
        self.port = port or free_port()
        self._controller = Controller(
            _MaildirHandler(self.maildir),
            hostname=LOOPBACK,
            port=self.port,
            data_size_limit=25 * 1024 * 1024,
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


def read_captured(directory: Path, *, limit: int = 200) -> list[CapturedMessage]:
    """The newest captured messages first."""
    if not directory.exists():
        return []
    box = mailbox.Maildir(directory, create=False)
    found = [item for key in box.iterkeys() if (item := _parse(box, key)) is not None]
    found.sort(key=lambda item: item.received_at, reverse=True)
    return found[:limit]


def read_one(directory: Path, key: str) -> CapturedMessage | None:
    if not directory.exists():
        return None
    return _parse(mailbox.Maildir(directory, create=False), key)


def _parse(box: mailbox.Maildir, key: str) -> CapturedMessage | None:
    try:
        stored = box.get_message(key)
    except (KeyError, FileNotFoundError):
        return None
    message = message_from_bytes(stored.as_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return CapturedMessage(
        key=key,
        received_at=datetime.fromtimestamp(stored.get_date(), UTC),
        envelope_to=str(message.get("X-Envelope-To", "")),
        subject=str(message.get("Subject", "")),
        message=message,
    )
