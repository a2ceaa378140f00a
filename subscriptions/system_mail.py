"""Transactional mails to one person: confirmation, "already subscribed", erasure check.

``SystemMailer.queue`` renders a mail from ``templates/mail/<kind>.txt`` and ``.html`` in the
person's language and stores it in the ``system_mail`` outbox in the caller's transaction;
the outbox sender (``subscriptions.outbox``) delivers it afterwards, through aiosmtplib, and
DKIM-signs it as it leaves when a key is set. So the answer to a sign-up never waits on SMTP,
and a mail is never promised that is not durably queued.

These mails contain nothing the visitor typed except the address itself: a "name" field full
of spam must never reach the person whose address was entered.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import make_msgid
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlmodel import Session

from mailer.clock import utcnow
from mailer.compose import (
    alternative_message,
    date_header,
    encode_header,
    mailbox,
    safe_header,
)
from subscriptions.db import table_of
from subscriptions.i18n import gettext_for
from subscriptions.models import SystemMail, SystemMailStatus
from subscriptions.paths import TEMPLATES_DIR
from subscriptions.registry import ContactPoint, Text


@dataclass(frozen=True, slots=True)
class Sender:
    name: str
    address: str
    base_url: str
    operator: Text  # the operator's name and contact point, shown in every footer
    contact: ContactPoint


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    kind: str
    recipient: str
    message: bytes


_SYSTEM_MAILS = table_of(SystemMail)


class SystemMailer:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            auto_reload=False,  # the mails' templates are part of the release
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"]),
        )

    def render(
        self, kind: str, *, recipient: str, locale: str, subject: str, **context: Any
    ) -> bytes:
        _ = gettext_for(locale)
        values = {"_": _, "lang": locale, "sender": self.sender, **context}
        text = self._env.get_template(f"mail/{kind}.txt").render(values)
        html = self._env.get_template(f"mail/{kind}.html").render(values)
        domain = self.sender.address.rpartition("@")[2]
        headers = [
            ("From", mailbox(self.sender.name, self.sender.address)),
            ("To", safe_header(recipient, "recipient")),
            ("Subject", encode_header(_(subject), "subject")),
            ("Date", date_header()),
            ("Message-ID", make_msgid(domain=domain or None)),
            ("Auto-Submitted", "auto-generated"),
        ]
        return alternative_message(headers, text, html)

    def prepare(
        self, kind: str, *, recipient: str, locale: str, subject: str, **context: Any
    ) -> OutgoingMail:
        """A mail rendered and ready to be queued."""
        message = self.render(kind, recipient=recipient, locale=locale, subject=subject, **context)
        return OutgoingMail(kind, recipient, message)

    def queue(
        self,
        session: Session,
        kind: str,
        *,
        recipient: str,
        locale: str,
        subject: str,
        **context: Any,
    ) -> None:
        """Render a mail and store it for the outbox, in the session's transaction."""
        mail = self.prepare(kind, recipient=recipient, locale=locale, subject=subject, **context)
        session.flush()
        self.queue_on(session.connection(), mail)

    @staticmethod
    def queue_on(conn: Connection, *mails: OutgoingMail) -> None:
        """Store prepared mails for the outbox, in the transaction of ``conn``."""
        if not mails:
            return
        now = utcnow()
        conn.execute(
            insert(_SYSTEM_MAILS),
            [
                {
                    "recipient": mail.recipient,
                    "kind": mail.kind,
                    "message": mail.message,
                    "status": SystemMailStatus.queued,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for mail in mails
            ],
        )
