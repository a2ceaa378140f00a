"""Telling the parties that hold a person's data about their opt-outs.

When a person withdraws, ``notify`` writes a ``PartyNotice`` for every party that received
their data and needs to know, in the same transaction as the withdrawal: processors that
sent them an issue learn of magazine withdrawals; joint users that received them in an
export learn of joint-use and transfer withdrawals; an erasure or a complaint reaches
everyone who holds the address. ``hand_over`` gives a party its pending notices and deletes
them (they hold the address), recording the hand-over as a transfer; the pull API does the
same in two steps (``pending`` then ``acknowledge``), so a lost answer loses no notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, text
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions.db import table_of
from subscriptions.models import (
    ConsentChannel,
    ConsentPurpose,
    PartyNotice,
    Subscriber,
)
from subscriptions.transfers import record_transfer

EVERYONE = (ConsentChannel.erasure, ConsentChannel.complaint)


_HOLDERS = text(
    """
    SELECT DISTINCT d.processor, 'processor' FROM delivery d
    WHERE d.subscriber_id = :subscriber AND d.processor IS NOT NULL
      AND d.status IN ('sending', 'sent', 'failed', 'deferred')
    UNION
    SELECT DISTINCT r.party, 'joint_user' FROM transfer_subject s
    JOIN transfer_record r ON r.id = s.transfer_id
    WHERE s.subscriber_id = :subscriber AND r.party_kind = 'joint_user'
    """
)


def holders(conn: Connection, subscriber_id: int) -> set[tuple[str, str]]:
    """(party, kind) pairs that received this person's data: processors a message to them was
    handed to (or is with), joint users that received them in an export. One query: it runs
    on every withdrawal."""
    rows = conn.execute(_HOLDERS, {"subscriber": subscriber_id}).all()
    return {(party, kind) for party, kind in rows if party}


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
    session.flush()
    return notify_holders(
        session.connection(),
        Person(subscriber.id, subscriber.email, subscriber.address_digest),
        purpose,
        scope,
        channel,
    )


@dataclass(frozen=True, slots=True)
class Person:
    """What a notice needs of the person who withdrew."""

    id: int
    email: str
    address_digest: str


_NOTICES = table_of(PartyNotice)
_PENDING = select(_NOTICES.c.id).where(
    _NOTICES.c.party == bindparam("party"),
    _NOTICES.c.subject_digest == bindparam("digest"),
    _NOTICES.c.change == bindparam("change"),
)


def notify_holders(
    conn: Connection,
    person: Person,
    purpose: ConsentPurpose,
    scope: str,
    channel: ConsentChannel,
) -> int:
    """``notify`` on a connection, in its transaction, without the ORM."""
    change = (
        "erased"
        if channel is ConsentChannel.erasure
        else (f"{purpose.value} withdrawn" + (f" ({scope})" if scope else ""))
    )
    written = 0
    for party, kind in sorted(holders(conn, person.id)):
        concerned = (
            channel in EVERYONE
            or (kind == "processor" and purpose is ConsentPurpose.magazine)
            or (kind == "joint_user" and purpose is not ConsentPurpose.magazine)
        )
        if not concerned:
            continue
        key = {"party": party, "digest": person.address_digest, "change": change}
        if conn.execute(_PENDING, key).first() is None:
            conn.execute(
                insert(_NOTICES),
                {
                    "party": party,
                    "party_kind": kind,
                    "subject_digest": person.address_digest,
                    "address": person.email,
                    "change": change,
                    "created_at": utcnow(),
                },
            )
            written += 1
    return written


def pending(session: Session, party: str) -> list[PartyNotice]:
    return list(
        session.exec(
            select(PartyNotice).where(PartyNotice.party == party).order_by(col(PartyNotice.id))
        ).all()
    )


def record_hand_over(
    session: Session, party: str, notices: list[PartyNotice], *, triggered_by: str
) -> None:
    """Record that ``notices`` (their addresses) went to ``party``."""
    if notices:
        record_transfer(
            session,
            party=party,
            party_kind=notices[0].party_kind,
            fields=["email"],
            people=[(None, n.subject_digest) for n in notices],
            purpose="opt-out notification",
            legal_basis="honouring withdrawals (APPI Art. 35)",
            triggered_by=triggered_by,
        )


def acknowledge(session: Session, party: str, ids: list[int]) -> int:
    """Delete the party's notices it confirmed receiving; return how many there were."""
    result = session.execute(
        delete(PartyNotice)
        .where(col(PartyNotice.party) == party)
        .where(col(PartyNotice.id).in_(ids))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def as_dict(notice: PartyNotice) -> dict[str, Any]:
    return {
        "id": notice.id,
        "address": notice.address,
        "change": notice.change,
        "at": notice.created_at.isoformat(),
    }


def hand_over(session: Session, party: str, *, triggered_by: str) -> list[dict[str, Any]]:
    """The party's pending notices, removed from the outbox and recorded as a transfer."""
    notices = pending(session, party)
    record_hand_over(session, party, notices, triggered_by=triggered_by)
    acknowledge(session, party, [n.id for n in notices if n.id is not None])
    return [as_dict(n) for n in notices]
