"""Housekeeping of the opt-in store, run hourly by the scheduler's leader.

- sign-ups never confirmed within ``MAILMAG_PENDING_DAYS`` are withdrawn and their data purged;
- used form-token nonces are forgotten once the tokens themselves have expired;
- system mails (which hold an address) are deleted a week after they were sent or gave up;
- raw inbound messages (bounces, complaints: personal data) after ``inbound_retention``;
- transfer records (and their subject rows) after ``transfer_retention`` (default three years
  and a day: the period APPI sets for records of consent-based transfers abroad).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions.db import for_writing
from subscriptions.models import (
    FormNonce,
    InboundMessage,
    SystemMail,
    SystemMailStatus,
    TransferRecord,
    TransferSubject,
)
from subscriptions.subscribing import OptIn

log = logging.getLogger(__name__)

SYSTEM_MAIL_KEPT = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Purged:
    expired_signups: int
    form_nonces: int
    system_mails: int
    inbound_messages: int = 0
    transfer_records: int = 0


def run_once(
    engine: Engine,
    optin: OptIn,
    form_token_lifetime: timedelta,
    inbound_retention: timedelta = timedelta(days=30),
    transfer_retention: timedelta = timedelta(days=3 * 365 + 1),
) -> Purged:
    now = utcnow()
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
        if old_transfers:
            session.execute(
                delete(TransferSubject).where(col(TransferSubject.transfer_id).in_(old_transfers))
            )
            session.execute(delete(TransferRecord).where(col(TransferRecord.id).in_(old_transfers)))
        session.commit()
    return Purged(expired, int(nonces), int(mails), int(inbound), len(old_transfers))
