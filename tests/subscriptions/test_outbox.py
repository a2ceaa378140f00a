"""System mail: stored first, sent once even with several web processes, retried on 4xx."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.clock import utcnow
from mailer.transport import (
    Envelope,
    MemoryTransport,
    Outcome,
    SendResult,
    SMTPClient,
    SMTPRelay,
    SMTPTransport,
)
from subscriptions.app import create_app
from subscriptions.db import for_writing
from subscriptions.models import SystemMail, SystemMailStatus
from subscriptions.outbox import OutboxSender
from subscriptions.settings import Settings
from tests.subscriptions.test_optin_flow import subscribe
from tests.support.smtp import SMTPSink


def queue_mails(engine: Engine, count: int) -> None:
    with Session(for_writing(engine)) as session:
        for n in range(count):
            session.add(
                SystemMail(
                    recipient=f"p{n}@example.org",
                    kind="confirm",
                    message=b"Subject: hi\r\n\r\nhello\r\n",
                )
            )
        session.commit()


def test_two_senders_never_send_the_same_mail(engine: Engine) -> None:
    queue_mails(engine, 40)
    first, second = MemoryTransport(), MemoryTransport()
    senders = [
        OutboxSender(engine, first, "bounce@example.com"),
        OutboxSender(engine, second, "bounce@example.com"),
    ]

    async def both() -> None:
        await asyncio.gather(*(s.deliver_due() for s in senders))

    asyncio.run(both())
    recipients = [e.recipient for e in first.sent + second.sent]
    assert sorted(recipients) == sorted(f"p{n}@example.org" for n in range(40))
    with Session(engine) as session:
        assert {m.status for m in session.exec(select(SystemMail)).all()} == {SystemMailStatus.sent}


def test_a_temporary_failure_is_retried_later_and_a_permanent_one_gives_up(engine: Engine) -> None:
    queue_mails(engine, 2)

    def answer(envelope: Envelope) -> SendResult:
        if envelope.recipient == "p0@example.org":
            return SendResult(Outcome.deferred, 451, "try later")
        return SendResult(Outcome.failed, 550, f"5.1.1 <{envelope.recipient}>: no such user")

    sender = OutboxSender(engine, MemoryTransport(answer=answer), "bounce@example.com")
    assert asyncio.run(sender.deliver_due()) == 2
    assert asyncio.run(sender.deliver_due()) == 0  # the deferred one waits for its backoff
    with Session(engine) as session:
        mails = {m.recipient: m for m in session.exec(select(SystemMail)).all()}
    assert mails["p0@example.org"].status is SystemMailStatus.queued
    assert mails["p0@example.org"].attempts == 1
    assert mails["p0@example.org"].last_error == "try later"
    assert mails["p1@example.org"].status is SystemMailStatus.failed
    assert mails["p1@example.org"].last_error == "5.1.1 <address>: no such user"  # no address


def test_mail_waits_for_a_relay_that_is_away_without_counting_attempts(engine: Engine) -> None:
    """A relay that takes no session is not the mails' fault: they stay due, their attempts
    untouched, nothing is claimed while its circuit is open, and they go when it is back."""
    queue_mails(engine, 3)
    relay = SMTPSink()
    relay.start()
    relay.stop()
    transport = SMTPTransport(
        SMTPRelay(host=relay.host, port=relay.port, client=SMTPClient.aiosmtplib)
    )
    sender = OutboxSender(engine, transport, "bounce@example.com")

    def mails() -> list[SystemMail]:
        with Session(engine) as session:
            return list(session.exec(select(SystemMail)).all())

    async def scenario() -> tuple[int, int, int]:
        away = await sender.deliver_due()
        held = mails()
        assert [(m.status, m.attempts) for m in held] == [(SystemMailStatus.queued, 0)] * 3
        assert all(m.next_attempt_at <= utcnow() for m in held)  # due again at once
        still_away = await sender.deliver_due()  # the circuit is open: nothing claimed
        relay.restart()
        for _ in range(100):
            if transport.ready:
                break
            await asyncio.sleep(0.05)
        back = await sender.deliver_due()
        await transport.close()
        return away, still_away, back

    try:
        assert asyncio.run(scenario()) == (0, 0, 3)
    finally:
        relay.stop()
    assert [(m.status, m.attempts) for m in mails()] == [(SystemMailStatus.sent, 1)] * 3
    assert len(relay.received) == 3


def test_a_confirmation_mail_is_dkim_signed_when_a_key_is_set(
    settings: Settings, engine: Engine, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    """The mails that most need to arrive (issue 21 item 8), verified with dkimpy."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = settings.model_copy(update={"dkim_private_key_file": key_file, "dkim_selector": "mm"})
    with TestClient(create_app(signed, engine=engine)) as client:
        assert subscribe(client, "reader@example.org").status_code == 200
        [received] = smtp_server.wait_for(1)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mm._domainkey.example.com."  # the sender's domain
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    assert received.data.startswith(b"DKIM-Signature:")
    assert dkim.verify(received.data, dnsfunc=dns)
    assert not dkim.verify(
        received.data.replace(b"reader@example.org", b"other@example.org"), dnsfunc=dns
    )
