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
    SELECT DISTINCT d.subscriber_id, d.processor, 'processor' FROM delivery d
    WHERE d.subscriber_id IN :subscribers AND d.processor IS NOT NULL
      AND d.status IN ('sending', 'sent', 'failed', 'deferred')
    UNION
    SELECT DISTINCT s.subscriber_id, r.party, 'joint_user' FROM transfer_subject s
    JOIN transfer_record r ON r.id = s.transfer_id
    WHERE s.subscriber_id IN :subscribers AND r.party_kind = 'joint_user'
    """
).bindparams(bindparam("subscribers", expanding=True))


def holders(conn: Connection, subscriber_ids: list[int]) -> dict[int, set[tuple[str, str]]]:
    """Who received each of these people's data, in one query (it runs on every
    withdrawal): person id to (party, kind) pairs, the processors a message to them was
    handed to (or is with) and the joint users that received them in an export; people
    nobody holds are left out."""
    held: dict[int, set[tuple[str, str]]] = {}
    for subscriber_id, party, kind in conn.execute(_HOLDERS, {"subscribers": subscriber_ids}):
        if party:
            held.setdefault(subscriber_id, set()).add((party, kind))
    return held


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


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One withdrawal the parties may need to hear of: whose, of what, and how it came."""

    person: Person
    purpose: ConsentPurpose
    scope: str
    channel: ConsentChannel

    @property
    def change(self) -> str:
        if self.channel is ConsentChannel.erasure:
            return "erased"
        return f"{self.purpose.value} withdrawn" + (f" ({self.scope})" if self.scope else "")

    def concerns(self, kind: str) -> bool:
        """Whether a party of this kind must be told."""
        return (
            self.channel in EVERYONE
            or (kind == "processor" and self.purpose is ConsentPurpose.magazine)
            or (kind == "joint_user" and self.purpose is not ConsentPurpose.magazine)
        )


_NOTICES = table_of(PartyNotice)
_PENDING = select(_NOTICES.c.party, _NOTICES.c.subject_digest, _NOTICES.c.change).where(
    _NOTICES.c.subject_digest.in_(bindparam("digests", expanding=True))
)


def notify_holders(
    conn: Connection,
    person: Person,
    purpose: ConsentPurpose,
    scope: str,
    channel: ConsentChannel,
) -> int:
    """``notify`` on a connection, in its transaction, without the ORM."""
    return notify_all(conn, [Withdrawal(person, purpose, scope, channel)])


def notify_all(conn: Connection, withdrawals: list[Withdrawal]) -> int:
    """The notices many withdrawals call for, in a few statements whatever their number: who
    holds each person, which notices are already pending, and one insert of the rest (a
    party is told of a change once, until it collects the notice). Returns how many were
    written."""
    if not withdrawals:
        return 0
    held = holders(conn, sorted({w.person.id for w in withdrawals}))
    due = [
        (party, kind, w)
        for w in withdrawals
        for party, kind in sorted(held.get(w.person.id, ()))
        if w.concerns(kind)
    ]
    if not due:
        return 0
    digests = sorted({w.person.address_digest for _, _, w in due})
    told = {tuple(row) for row in conn.execute(_PENDING, {"digests": digests})}
    now = utcnow()
    rows = []
    for party, kind, w in due:
        key = (party, w.person.address_digest, w.change)
        if key in told:
            continue
        told.add(key)
        rows.append(
            {
                "party": party,
                "party_kind": kind,
                "subject_digest": w.person.address_digest,
                "address": w.person.email,
                "change": w.change,
                "created_at": now,
            }
        )
    if rows:
        conn.execute(insert(_NOTICES), rows)
    return len(rows)


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
