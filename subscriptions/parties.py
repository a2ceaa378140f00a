"""Telling the parties that hold a person's data about their opt-outs.

When a person withdraws, ``notify`` writes a ``PartyNotice`` for every party that received
their data and needs to know, in the same transaction as the withdrawal: processors that
sent them an issue learn of magazine withdrawals; joint users that received them in an
export learn of joint-use and transfer withdrawals; an erasure or a complaint reaches
everyone who holds the address. ``hand_over`` gives a party its pending notices and deletes
them (they hold the address), recording the hand-over as a transfer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus, Issue
from subscriptions.models import (
    ConsentChannel,
    ConsentPurpose,
    PartyNotice,
    Subscriber,
    TransferRecord,
    TransferSubject,
)

HANDED_OVER = (DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.deferred)
EVERYONE = (ConsentChannel.erasure, ConsentChannel.complaint)


def holders(session: Session, subscriber_id: int) -> set[tuple[str, str]]:
    """(party, kind) pairs that received this person's data."""
    processors = session.exec(
        select(Issue.route)
        .join(Delivery, col(Delivery.issue_id) == Issue.id)
        .where(Delivery.subscriber_id == subscriber_id)
        .where(col(Issue.route).is_not(None))
        .where(col(Delivery.status).in_(HANDED_OVER))
        .distinct()
    ).all()
    joint_users = session.exec(
        select(TransferRecord.party)
        .join(TransferSubject, col(TransferSubject.transfer_id) == TransferRecord.id)
        .where(TransferSubject.subscriber_id == subscriber_id)
        .where(TransferRecord.party_kind == "joint_user")
        .distinct()
    ).all()
    return {(p, "processor") for p in processors if p} | {(j, "joint_user") for j in joint_users}


def notify(
    session: Session,
    subscriber: Subscriber,
    purpose: ConsentPurpose,
    scope: str,
    channel: ConsentChannel,
) -> int:
    """Queue the notices one withdrawal calls for; return how many were written."""
    if subscriber.id is None:
        return 0
    change = (
        "erased"
        if channel is ConsentChannel.erasure
        else (f"{purpose.value} withdrawn" + (f" ({scope})" if scope else ""))
    )
    written = 0
    for party, kind in sorted(holders(session, subscriber.id)):
        concerned = (
            channel in EVERYONE
            or (kind == "processor" and purpose is ConsentPurpose.magazine)
            or (kind == "joint_user" and purpose is not ConsentPurpose.magazine)
        )
        if not concerned:
            continue
        pending = session.exec(
            select(PartyNotice.id)
            .where(PartyNotice.party == party)
            .where(PartyNotice.subject_digest == subscriber.address_digest)
            .where(PartyNotice.change == change)
        ).first()
        if pending is None:
            session.add(
                PartyNotice(
                    party=party,
                    party_kind=kind,
                    subject_digest=subscriber.address_digest,
                    address=subscriber.email,
                    change=change,
                )
            )
            written += 1
    return written


def hand_over(session: Session, party: str, *, triggered_by: str) -> list[dict[str, Any]]:
    """The party's pending notices, removed from the outbox and recorded as a transfer."""
    notices = session.exec(
        select(PartyNotice).where(PartyNotice.party == party).order_by(col(PartyNotice.id))
    ).all()
    if not notices:
        return []
    handed = [
        {"address": n.address, "change": n.change, "at": n.created_at.isoformat()} for n in notices
    ]
    session.add(
        TransferRecord(
            party=party,
            party_kind=notices[0].party_kind,
            fields="email",
            people=len(notices),
            purpose="opt-out notification",
            legal_basis="honouring withdrawals (APPI Art. 35)",
            triggered_by=triggered_by[:100],
            created_at=utcnow(),
        )
    )
    session.execute(delete(PartyNotice).where(col(PartyNotice.id).in_([n.id for n in notices])))
    return handed
