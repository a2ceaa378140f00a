"""Bounces, complaints, auto-replies and unsubscribe mails delivered over SMTP to
``mailmag inbound`` end in the right state, on both databases; garbage changes nothing."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.capture import free_port
from mailer.inbound import inbound_server
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscriptions.app import create_app
from subscriptions.models import (
    ConsentChannel,
    ConsentEvent,
    InboundMessage,
    InboundStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.smtp import SMTPSink

SAMPLES = Path(__file__).parent / "samples"
DOMAIN = "example.com"


@pytest.fixture
def sent(app: FastAPI, engine: Engine, smtp_server: SMTPSink) -> dict[str, dict[str, str]]:
    """An issue sent to three readers; what each message carried, by recipient."""
    issue_id, _people = seed(app, engine, 3)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    carried = {}
    for received in smtp_server.received:
        message = message_from_bytes(received.data)
        carried[received.rcpt_tos[0]] = {
            "return_path": received.mail_from,
            "message_id": str(message["Message-ID"]),
            "list_unsubscribe": " ".join(str(message["List-Unsubscribe"]).split()),
            "mailto": str(message["List-Unsubscribe"]).split("mailto:")[1].split(">")[0],
        }
    return carried


@pytest.fixture
def inbound(app: FastAPI) -> Iterator[int]:
    runtime: Runtime = app.state.runtime
    port = free_port()
    server = inbound_server(runtime.inbound_handler(), "127.0.0.1", port)
    server.start()
    yield port
    server.stop()


def deliver(
    port: int, recipient: str, raw: str, sender: str = "MAILER-DAEMON@mx.example.net"
) -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail(sender, [recipient], raw.replace("\n", "\r\n").encode("utf-8"))


def sample(name: str, **values: str) -> str:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def person(engine: Engine, email: str) -> tuple[Subscriber, list[Subscription]]:
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
        subscriptions = list(
            session.exec(
                select(Subscription).where(Subscription.subscriber_id == subscriber.id)
            ).all()
        )
        return subscriber, subscriptions


def suppression(engine: Engine, digest: str) -> Suppression | None:
    with Session(engine) as session:
        return session.exec(select(Suppression).where(Suppression.address_digest == digest)).first()


def last_inbound(engine: Engine) -> InboundMessage:
    with Session(engine) as session:
        return session.exec(select(InboundMessage).order_by(col(InboundMessage.id).desc())).first()  # type: ignore[return-value]


@pytest.mark.parametrize(
    "name", ["postfix.eml", "exim.eml", "qmail.eml", "exchange.eml", "gmail.eml"]
)
def test_hard_bounces_from_many_mtas_suppress_the_address(
    name: str, sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader1@example.org"
    return_path = sent[address]["return_path"]
    deliver(inbound, return_path, sample(name, recipient=address, return_path=return_path))
    subscriber, subscriptions = person(engine, address)
    found = suppression(engine, subscriber.address_digest)
    assert found is not None
    assert found.reason is SuppressionReason.hard_bounce
    assert [s.status for s in subscriptions] == [SubscriptionStatus.suppressed]
    with Session(engine) as session:
        delivery = session.exec(
            select(Delivery).where(Delivery.subscriber_id == subscriber.id)
        ).one()
        assert delivery.status is DeliveryStatus.failed
        event = session.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq).desc())).first()
        assert event is not None
        assert event.channel is ConsentChannel.bounce
    stored = last_inbound(engine)
    assert (stored.status, stored.kind) == (InboundStatus.processed, "hard_bounce")
    other, _ = person(engine, "reader2@example.org")  # nobody else is touched
    assert suppression(engine, other.address_digest) is None


def test_a_delay_notice_scores_a_soft_bounce_and_enough_of_them_suppress(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader0@example.org"
    return_path = sent[address]["return_path"]
    notice = sample("postfix-delayed.eml", recipient=address, return_path=return_path)
    deliver(inbound, return_path, notice)
    subscriber, subscriptions = person(engine, address)
    assert subscriber.bounce_score == pytest.approx(1.0, abs=0.01)
    assert suppression(engine, subscriber.address_digest) is None
    assert subscriptions[0].status is SubscriptionStatus.confirmed
    for _ in range(5):  # the score halves weekly, so five quick ones are just under 5
        deliver(inbound, return_path, notice)
    subscriber, subscriptions = person(engine, address)
    found = suppression(engine, subscriber.address_digest)
    assert found is not None
    assert found.reason is SuppressionReason.soft_bounce
    assert subscriptions[0].status is SubscriptionStatus.suppressed


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind"),
    [
        ("5.7.1", "554 5.7.1 Message rejected as unsolicited bulk mail (spam)", "blocked"),
        ("5.2.2", "552 5.2.2 Mailbox full: quota exceeded", "soft_bounce"),
    ],
)
def test_a_spam_block_or_a_full_mailbox_never_suppresses_the_reader(
    status: str,
    diagnostic: str,
    kind: str,
    sent: dict[str, dict[str, str]],
    inbound: int,
    engine: Engine,
) -> None:
    address = "reader1@example.org"
    return_path = sent[address]["return_path"]
    dsn = sample(
        "dsn.eml", recipient=address, return_path=return_path, status=status, diagnostic=diagnostic
    )
    deliver(inbound, return_path, dsn)
    subscriber, subscriptions = person(engine, address)
    assert suppression(engine, subscriber.address_digest) is None
    assert [s.status for s in subscriptions] == [SubscriptionStatus.confirmed]
    stored = last_inbound(engine)
    assert (stored.status, stored.kind) == (InboundStatus.processed, kind)
    with Session(engine) as session:
        delivery = session.exec(
            select(Delivery).where(Delivery.subscriber_id == subscriber.id)
        ).one()
        issue = session.get(Issue, delivery.issue_id)
        assert issue is not None
    assert delivery.status is DeliveryStatus.failed  # the message did not arrive
    assert (issue.blocks, issue.hard_bounces) == ((1, 0) if kind == "blocked" else (0, 0))
    assert subscriber.bounce_score == (0 if kind == "blocked" else pytest.approx(1.0, abs=0.01))


def test_a_complaint_with_a_redacted_recipient_finds_its_person(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader2@example.org"
    carried = sent[address]
    report = sample(
        "arf-redacted.eml",
        domain=DOMAIN,
        message_id=carried["message_id"],
        list_unsubscribe=carried["list_unsubscribe"],
    )
    deliver(inbound, f"abuse@{DOMAIN}", report, sender="complaints@fbl.example.net")
    subscriber, subscriptions = person(engine, address)
    found = suppression(engine, subscriber.address_digest)
    assert found is not None
    assert found.reason is SuppressionReason.complaint
    assert [s.status for s in subscriptions] == [SubscriptionStatus.unsubscribed]
    with Session(engine) as session:
        event = session.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq).desc())).first()
        assert event is not None
        assert event.channel is ConsentChannel.complaint


def test_a_mail_to_the_unsubscribe_address_unsubscribes(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader0@example.org"
    deliver(
        inbound, sent[address]["mailto"], "Subject: unsubscribe\n\nunsubscribe\n", sender=address
    )
    subscriber, subscriptions = person(engine, address)
    assert [s.status for s in subscriptions] == [SubscriptionStatus.unsubscribed]
    assert suppression(engine, subscriber.address_digest) is None
    with Session(engine) as session:
        event = session.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq).desc())).first()
        assert event is not None
        assert (event.channel, event.scope) == (ConsentChannel.mailto, "weekly")


@pytest.mark.parametrize("name", ["auto-reply.eml", "garbage.eml"])
def test_auto_replies_and_garbage_change_nothing(
    name: str, sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader1@example.org"
    return_path = sent[address]["return_path"]
    deliver(
        inbound,
        return_path,
        sample(name, recipient=address, return_path=return_path),
        sender=address,
    )
    subscriber, subscriptions = person(engine, address)
    assert suppression(engine, subscriber.address_digest) is None
    assert [s.status for s in subscriptions] == [SubscriptionStatus.confirmed]
    assert last_inbound(engine).status is InboundStatus.ignored


def test_only_addresses_it_owns_are_accepted(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    forged = "unsubscribe+" + "a" * 26 + f"@{DOMAIN}"
    for recipient in (
        "victim@elsewhere.example",
        forged,
        f"bounce+short@{DOMAIN}",
        f"someone@{DOMAIN}",
    ):
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            deliver(inbound, recipient, "Subject: x\n\nrelay me\n")
    with Session(engine) as session:
        assert session.exec(select(InboundMessage)).all() == []
        assert all(
            s.status is SubscriptionStatus.confirmed
            for s in session.exec(select(Subscription)).all()
        )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("arf-redacted.eml", "complaint rate"),
        ("gmail.eml", "hard-bounce rate"),
        ("dsn.eml", "block rate"),
    ],
)
def test_too_many_complaints_bounces_or_blocks_pause_a_running_issue(
    name: str, reason: str, settings: Settings, engine: Engine, smtp_server: SMTPSink
) -> None:
    app = create_app(
        settings.model_copy(update={"brake_min_deliveries": 10}), engine=engine, delivery=False
    )
    runtime: Runtime = app.state.runtime
    issue_id, _people = seed(app, engine, 30)
    runtime.start_issue(issue_id)
    worker = worker_for(app, engine, smtp_server, batch=10)
    port = free_port()
    server = inbound_server(runtime.inbound_handler(), "127.0.0.1", port)
    server.start()

    def report_the_first_message() -> None:
        first = smtp_server.received[0]
        message = message_from_bytes(first.data)
        values = {
            "domain": DOMAIN,
            "recipient": first.rcpt_tos[0],
            "return_path": first.mail_from,
            "message_id": str(message["Message-ID"]),
            "list_unsubscribe": " ".join(str(message["List-Unsubscribe"]).split()),
            "status": "5.7.1",
            "diagnostic": "550 5.7.1 Our system has detected that this message is spam",
        }
        target = f"abuse@{DOMAIN}" if name.startswith("arf") else first.mail_from
        deliver(port, target, sample(name, **values))

    async def scenario() -> tuple[int, int]:
        sent_first = await worker.run_once()  # the issue is under way: 10 of 30 sent
        await asyncio.to_thread(report_the_first_message)
        sent_after = await worker.run_once()
        await worker.close()
        return sent_first, sent_after

    try:
        assert asyncio.run(scenario()) == (10, 0)  # nothing more leaves once it is paused
    finally:
        server.stop()
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        assert issue.status is IssueStatus.paused
        assert issue.pause_reason is not None
        assert issue.pause_reason.startswith(reason)
    assert len(smtp_server.received) == 10


def test_raw_inbound_messages_are_purged_after_retention(
    sent: dict[str, dict[str, str]], inbound: int, app: FastAPI, engine: Engine
) -> None:
    from datetime import timedelta

    from mailer.clock import utcnow
    from subscriptions import maintenance

    address = "reader1@example.org"
    return_path = sent[address]["return_path"]
    for _ in range(2):
        deliver(
            inbound,
            return_path,
            sample("auto-reply.eml", recipient=address, return_path=return_path),
            sender=address,
        )
    with Session(engine) as session:
        old = session.exec(select(InboundMessage)).first()
        assert old is not None
        old.received_at = utcnow() - timedelta(days=31)
        session.add(old)
        session.commit()
    runtime: Runtime = app.state.runtime
    purged = maintenance.run_once(engine, runtime.optin, timedelta(hours=2), timedelta(days=30))
    assert purged.inbound_messages == 1
    with Session(engine) as session:
        assert len(session.exec(select(InboundMessage)).all()) == 1


def test_a_complaint_to_the_return_path_with_the_recipient_shown(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    address = "reader0@example.org"
    carried = sent[address]
    report = sample(
        "arf-redacted.eml",
        domain=DOMAIN,
        message_id="<other@example.net>",
        list_unsubscribe="<https://example.net/u/x>",
    )
    report = report.replace("redacted@redacted", address)
    deliver(inbound, carried["return_path"], report, sender="complaints@fbl.example.net")
    subscriber, subscriptions = person(engine, address)
    found = suppression(engine, subscriber.address_digest)
    assert found is not None
    assert found.reason is SuppressionReason.complaint
    assert [s.status for s in subscriptions] == [SubscriptionStatus.unsubscribed]


def test_one_client_is_held_to_its_message_rate(app: FastAPI, engine: Engine) -> None:
    from mailer.ratelimit import Limit

    runtime: Runtime = app.state.runtime
    handler = runtime.inbound_handler()
    handler.per_client = type(handler.per_client)(Limit(2, 60))
    port = free_port()
    server = inbound_server(handler, "127.0.0.1", port)
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.ehlo()
            codes = []
            for _ in range(3):
                code, _reply = smtp.docmd("MAIL FROM:<a@example.net>")
                codes.append(code)
                smtp.rset()
    finally:
        server.stop()
    assert codes == [250, 250, 421]


def test_one_message_is_stored_once_and_acted_on_once_whatever_its_envelope_lists(
    sent: dict[str, dict[str, str]], inbound: int, engine: Engine
) -> None:
    """One DSN with its return path ten times in RCPT (in any case) is one stored copy; one
    message to several owned addresses is kept and acted on for the first token address
    only, so one message cannot suppress several people."""
    first, second, third = sorted(sent)
    return_path = sent[first]["return_path"]
    bounce = sample("postfix.eml", recipient=first, return_path=return_path).replace("\n", "\r\n")
    repeated = [return_path if n % 2 else return_path.upper() for n in range(10)]
    with smtplib.SMTP("127.0.0.1", inbound) as smtp:
        assert smtp.sendmail("MAILER-DAEMON@mx.example.net", repeated, bounce) == {}
    with Session(engine) as session:
        stored = session.exec(select(InboundMessage)).all()
    assert [(m.recipient.lower(), m.kind) for m in stored] == [(return_path, "hard_bounce")]

    several = [
        f"postmaster@{DOMAIN}",
        sent[second]["return_path"],
        sent[third]["return_path"],
    ]
    bounce = sample("postfix.eml", recipient=second, return_path=several[1]).replace("\n", "\r\n")
    with smtplib.SMTP("127.0.0.1", inbound) as smtp:
        assert smtp.sendmail("MAILER-DAEMON@mx.example.net", several, bounce) == {}
    with Session(engine) as session:
        stored = session.exec(select(InboundMessage).order_by(col(InboundMessage.id))).all()
    assert [m.recipient for m in stored[1:]] == [several[1]]
    for address, suppressed in ((second, True), (third, False)):
        subscriber, _ = person(engine, address)
        assert (suppression(engine, subscriber.address_digest) is not None) is suppressed
