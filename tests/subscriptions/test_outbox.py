"""System mail: stored first, sent once even with several web processes, retried on 4xx."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.transport import Envelope, MemoryTransport, Outcome, SendResult
from subscriptions.db import for_writing
from subscriptions.models import SystemMail, SystemMailStatus
from subscriptions.outbox import OutboxSender


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
        return SendResult(Outcome.failed, 550, "no such user")

    sender = OutboxSender(engine, MemoryTransport(answer=answer), "bounce@example.com")
    assert asyncio.run(sender.deliver_due()) == 2
    assert asyncio.run(sender.deliver_due()) == 0  # the deferred one waits for its backoff
    with Session(engine) as session:
        mails = {m.recipient: m for m in session.exec(select(SystemMail)).all()}
    assert mails["p0@example.org"].status is SystemMailStatus.queued
    assert mails["p0@example.org"].attempts == 1
    assert mails["p0@example.org"].last_error == "try later"
    assert mails["p1@example.org"].status is SystemMailStatus.failed
