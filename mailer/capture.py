"""A local capture SMTP server for the embedded default, in the manner of Mailpit.

With no relay configured, ``mailmag serve`` hands outgoing mail to this server on
127.0.0.1 instead of the internet. Each message is written to a Maildir (created in
``tmp/`` readable by its owner alone, fsynced, then renamed into ``new/``, before the 250
reply) with its envelope in ``X-Envelope-*`` headers, and the web app lists it at
``/_mail``, so a new user sees exactly what subscribers would receive. The stdlib's
``mailbox`` reads the Maildir; it does not write it, since its writer creates every file
0644 whatever the data in it.
"""

from __future__ import annotations

import itertools
import mailbox
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailer.private_files import private_opener

LOOPBACK = "127.0.0.1"
_SEQUENCE = itertools.count()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (for tests and the capture server's port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def deliver(directory: Path, message: bytes) -> str:
    """Add ``message`` to the Maildir ``directory`` as a 0600 file; return its key. The
    name is unique as the Maildir convention makes it: time, process, a counter, host."""
    key = f"{time.time_ns()}.P{os.getpid()}Q{next(_SEQUENCE)}.{socket.gethostname()}"
    draft = directory / "tmp" / key
    with open(draft, "xb", opener=private_opener) as handle:
        handle.write(message)
        handle.flush()
        os.fsync(handle.fileno())
    draft.rename(directory / "new" / key)
    return key


class _MaildirHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook name)
        prefix = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        deliver(self.directory, prefix + envelope.original_content)
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
        mailbox.Maildir(directory, create=True)  # its folders, 0700
        self.port = port or free_port()
        self._controller = Controller(
            _MaildirHandler(directory),
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
