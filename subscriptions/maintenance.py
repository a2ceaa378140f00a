"""Housekeeping of the opt-in store, run hourly by the scheduler's leader.

- sign-ups never confirmed within ``MAILMAG_PENDING_DAYS`` are withdrawn and their data purged;
- used form-token nonces are forgotten once the tokens themselves have expired;
- system mails (which hold an address) are deleted a week after they were sent or gave up;
- raw inbound messages (bounces, complaints: personal data) after ``inbound_retention``;
- transfer records (and their subject rows) after ``transfer_retention`` (default three years
  and a day: the period APPI sets for records of consent-based transfers abroad);
- consent rows after ``consent_retention`` (see ``purge_consent``).

Nothing about an address under a legal hold (``mailmag hold add``) is purged. Every run is
recorded in ``retention_run`` with what each job deleted, and in the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.models import Delivery
from subscriptions import audit
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentAction,
    ConsentEvent,
    FormNonce,
    InboundMessage,
    LegalHold,
    RetentionRun,
    Subscriber,
    SystemMail,
    SystemMailStatus,
    TransferRecord,
    TransferSubject,
)
from subscriptions.subscribing import OptIn

log = logging.getLogger(__name__)

SYSTEM_MAIL_KEPT = timedelta(days=7)


LAST_MAIL_KEPT = timedelta(days=31)  # Specified Electronic Mail Act: a month after the last mail


@dataclass(frozen=True, slots=True)
class Purged:
    expired_signups: int
    form_nonces: int
    system_mails: int
    inbound_messages: int = 0
    transfer_records: int = 0
    consent_rows: int = 0
    held: int = 0  # rows due, kept under a legal hold

    def as_counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "held"}


def held_digests(session: Session) -> set[str]:
    return set(
        session.exec(
            select(LegalHold.subject_digest).where(col(LegalHold.released_at).is_(None))
        ).all()
    )


def purge_consent(session: Session, now: datetime, retention: timedelta) -> tuple[int, int]:
    """Blank the consent rows of people whose every consent ended more than ``retention`` ago
    and who were last mailed more than a month ago; keep each row's place in the chain.

    A person's rows are due when the latest event of each (purpose, scope) is a withdrawal,
    the latest event of all is older than ``retention``, and no delivery was sent to them in
    the last month. Returns (rows purged, rows kept under a legal hold)."""
    cutoff = now - max(retention, LAST_MAIL_KEPT)
    latest = (
        select(
            ConsentEvent.subject_digest,
            ConsentEvent.purpose,
            ConsentEvent.scope,
            func.max(ConsentEvent.seq).label("seq"),
        )
        .where(col(ConsentEvent.purged).is_(False))
        .group_by(
            col(ConsentEvent.subject_digest), col(ConsentEvent.purpose), col(ConsentEvent.scope)
        )
        .subquery()
    )
    still_live = func.sum(case((col(ConsentEvent.action) != ConsentAction.withdrawn, 1), else_=0))
    due = set(
        session.exec(
            select(ConsentEvent.subject_digest)
            .join(latest, col(ConsentEvent.seq) == latest.c.seq)
            .group_by(col(ConsentEvent.subject_digest))
            .having(still_live == 0)
            .having(func.max(ConsentEvent.occurred_at) < cutoff)
        ).all()
    )
    recently_mailed: set[str] = set()
    for chunk in _chunks(sorted(due), 500):
        recently_mailed |= set(
            session.exec(
                select(Subscriber.address_digest)
                .join(Delivery, col(Delivery.subscriber_id) == Subscriber.id)
                .where(col(Subscriber.address_digest).in_(chunk))
                .where(col(Delivery.sent_at) >= now - LAST_MAIL_KEPT)
            ).all()
        )
    due -= recently_mailed
    held = due & held_digests(session)
    due -= held
    kept = 0
    if held:
        kept = int(
            session.exec(
                select(func.count())
                .select_from(ConsentEvent)
                .where(col(ConsentEvent.subject_digest).in_(held))
                .where(col(ConsentEvent.purged).is_(False))
            ).one()
        )
    purged = 0
    for chunk in _chunks(sorted(due), 500):
        result = session.execute(
            update(ConsentEvent)
            .where(col(ConsentEvent.subject_digest).in_(chunk))
            .where(col(ConsentEvent.purged).is_(False))
            .values(
                purged=True,
                subject_digest="",
                subscriber_id=None,
                ip=None,
                user_agent=None,
                personal_erased=True,
            )
        )
        purged += int(result.rowcount)  # type: ignore[attr-defined]
    return purged, kept


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_once(
    engine: Engine,
    optin: OptIn,
    form_token_lifetime: timedelta,
    inbound_retention: timedelta = timedelta(days=30),
    transfer_retention: timedelta = timedelta(days=3 * 365 + 1),
    consent_retention: timedelta = timedelta(days=3 * 365 + 1),
    now: datetime | None = None,
) -> Purged:
    """One run of every retention job (``now`` lets a test look years ahead)."""
    started = utcnow()
    now = now or started
    with Session(for_writing(engine)) as session:
        expired = optin.purge_expired(session)
    with Session(for_writing(engine)) as session:
        nonces = session.execute(
            delete(FormNonce).where(col(FormNonce.used_at) < now - form_token_lifetime)
        ).rowcount  # type: ignore[attr-defined]
        mails = session.execute(
            delete(SystemMail)
            .where(col(SystemMail.status) != SystemMailStatus.queued)
            .where(col(SystemMail.created_at) < now - SYSTEM_MAIL_KEPT)
        ).rowcount  # type: ignore[attr-defined]
        inbound = session.execute(
            delete(InboundMessage).where(col(InboundMessage.received_at) < now - inbound_retention)
        ).rowcount  # type: ignore[attr-defined]
        old_transfers = [
            t.id
            for t in session.exec(
                select(TransferRecord).where(
                    col(TransferRecord.created_at) < now - transfer_retention
                )
            ).all()
        ]
        holds = held_digests(session)
        held_transfers = (
            set(
                session.exec(
                    select(TransferSubject.transfer_id)
                    .where(col(TransferSubject.transfer_id).in_(old_transfers))
                    .where(col(TransferSubject.subject_digest).in_(holds))
                ).all()
            )
            if holds and old_transfers
            else set()
        )
        old_transfers = [t for t in old_transfers if t not in held_transfers]
        if old_transfers:
            session.execute(
                delete(TransferSubject).where(col(TransferSubject.transfer_id).in_(old_transfers))
            )
            session.execute(delete(TransferRecord).where(col(TransferRecord.id).in_(old_transfers)))
        consent_rows, held_rows = purge_consent(session, now, consent_retention)
        purged = Purged(
            expired,
            int(nonces),
            int(mails),
            int(inbound),
            len(old_transfers),
            consent_rows,
            held_rows + len(held_transfers),
        )
        session.add(
            RetentionRun(
                started_at=started,
                finished_at=utcnow(),
                deleted=purged.as_counts(),
                held=purged.held,
            )
        )
        if any(purged.as_counts().values()):
            audit.record(session, audit.SYSTEM, "retention", detail=asdict(purged))
        session.commit()
    if any(purged.as_counts().values()):
        log.info("retention run", extra=asdict(purged))
    return purged
