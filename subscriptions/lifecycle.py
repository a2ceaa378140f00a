"""The subscription state machine and the consent it rests on; the one module that changes
``Subscription.status``.

::

    (none) ──request──▶ pending ──confirm──▶ confirmed ──end──▶ unsubscribed | suppressed
       ▲                   │                                          │
       └────── purge ◀─────┘ (expired)          request (fresh opt-in) ┘

Every transition writes its consent event in the same transaction: ``granted`` when a person
asks, ``confirmed`` when they confirm through the mailed link, ``withdrawn`` when they leave.
Joint use and foreign transfer are separate purposes with their own events; they need no
subscription row, their state is the latest event in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, tuple_, update
from sqlalchemy.engine import Connection
from sqlmodel import Session, select

from mailer.clock import utcnow
from subscriptions import consent, parties
from subscriptions.addresses import AddressHasher
from subscriptions.consent import Evidence
from subscriptions.db import table_of
from subscriptions.models import (
    ConsentAction,
    ConsentEvent,
    ConsentPurpose,
    Magazine,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from subscriptions.parties import Person

LIVE = (SubscriptionStatus.pending, SubscriptionStatus.confirmed)
_SUBSCRIPTIONS = table_of(Subscription)
# Built once: constructing the statement on every one-click cost more than running it.
_END = (
    update(_SUBSCRIPTIONS)
    .where(
        # The people as well as the pairs: SQLite scans the whole table for a row-value IN
        # alone, and searches the (subscriber, magazine) index with this.
        _SUBSCRIPTIONS.c.subscriber_id.in_(bindparam("people", expanding=True)),
        tuple_(_SUBSCRIPTIONS.c.subscriber_id, _SUBSCRIPTIONS.c.magazine_id).in_(
            bindparam("pairs", expanding=True)
        ),
        _SUBSCRIPTIONS.c.status.in_(LIVE),
    )
    .values(status=bindparam("to"), ended_at=bindparam("now"))
    .returning(_SUBSCRIPTIONS.c.subscriber_id, _SUBSCRIPTIONS.c.magazine_id)
)


@dataclass(frozen=True, slots=True)
class Change:
    """What a person asked of some of their subscriptions (to start or to end them): the
    magazines (id to slug, in the order their events are recorded) and how they asked."""

    person: Person
    magazines: Mapping[int, str]
    evidence: Evidence


class Lifecycle:
    def __init__(self, hasher: AddressHasher) -> None:
        self.hasher = hasher

    def _event(
        self,
        session: Session,
        subscriber: Subscriber,
        purpose: ConsentPurpose,
        action: ConsentAction,
        evidence: Evidence,
        scope: str = "",
        at: datetime | None = None,
    ) -> None:
        if action is ConsentAction.withdrawn:
            parties.notify(session, subscriber, purpose, scope, evidence.channel)
        session.flush()  # the subscriber row (and anything else pending) before its event
        event = consent.event_row(
            subscriber_id=subscriber.id,
            subject_digest=self.hasher.digest(subscriber.email),
            purpose=purpose,
            scope=scope,
            action=action,
            evidence=evidence,
            occurred_at=at,
        )
        consent.append_rows(session.connection(), [event])

    # --- magazines ---------------------------------------------------------------------------

    def subscriptions(self, session: Session, subscriber: Subscriber) -> dict[int, Subscription]:
        rows = session.exec(
            select(Subscription).where(Subscription.subscriber_id == subscriber.id)
        ).all()
        return {row.magazine_id: row for row in rows}

    def request(
        self, session: Session, subscriber: Subscriber, magazine: Magazine, evidence: Evidence
    ) -> bool:
        """A person asks for a magazine: pending until confirmed. False if already confirmed."""
        assert subscriber.id is not None
        assert magazine.id is not None
        existing = self.subscriptions(session, subscriber).get(magazine.id)
        if existing is not None and existing.status is SubscriptionStatus.confirmed:
            return False
        now = utcnow()
        if existing is None:
            existing = Subscription(
                subscriber_id=subscriber.id,
                magazine_id=magazine.id,
                status=SubscriptionStatus.pending,
                created_at=now,
            )
        else:
            existing.status = SubscriptionStatus.pending
            existing.created_at = now
            existing.confirmed_at = None
            existing.ended_at = None
        session.add(existing)
        self._event(
            session,
            subscriber,
            ConsentPurpose.magazine,
            ConsentAction.granted,
            evidence,
            scope=magazine.slug,
            at=now,
        )
        return True

    def request_new(self, conn: Connection, changes: Sequence[Change], at: datetime) -> None:
        """``request`` for people who have no subscription yet, on a connection, without the
        ORM, in three statements whatever their number (the new addresses of a group
        commit's sign-ups): each magazine pending, each with its grant."""
        if not changes:
            return
        conn.execute(
            insert(_SUBSCRIPTIONS),
            [
                {
                    "subscriber_id": change.person.id,
                    "magazine_id": magazine_id,
                    "status": SubscriptionStatus.pending,
                    "created_at": at,
                }
                for change in changes
                for magazine_id in change.magazines
            ],
        )
        consent.append_rows(
            conn,
            [
                consent.event_row(
                    subscriber_id=change.person.id,
                    subject_digest=change.person.address_digest,
                    purpose=ConsentPurpose.magazine,
                    action=ConsentAction.granted,
                    evidence=change.evidence,
                    scope=slug,
                    occurred_at=at,
                )
                for change in changes
                for slug in change.magazines.values()
            ],
        )

    def confirm(self, session: Session, subscriber: Subscriber, evidence: Evidence) -> int:
        """Confirm everything the person asked for and has not yet confirmed."""
        now = utcnow()
        confirmed = 0
        for subscription in self.subscriptions(session, subscriber).values():
            if subscription.status is SubscriptionStatus.pending:
                subscription.status = SubscriptionStatus.confirmed
                subscription.confirmed_at = now
                session.add(subscription)
                confirmed += 1
        for purpose, scope, notice_hash in self._unconfirmed_grants(session, subscriber):
            self._event(
                session,
                subscriber,
                purpose,
                ConsentAction.confirmed,
                Evidence(evidence.channel, evidence.ip, evidence.user_agent, notice_hash),
                scope=scope,
                at=now,
            )
        return confirmed

    def opt_in_confirmed(
        self, session: Session, subscriber: Subscriber, magazine: Magazine, evidence: Evidence
    ) -> bool:
        """A person who proved their mailbox (a signed link) adds a magazine: no second step."""
        if not self.request(session, subscriber, magazine, evidence):
            return False
        subscription = self.subscriptions(session, subscriber)[magazine.id or 0]
        subscription.status = SubscriptionStatus.confirmed
        subscription.confirmed_at = utcnow()
        session.add(subscription)
        self._event(
            session,
            subscriber,
            ConsentPurpose.magazine,
            ConsentAction.confirmed,
            evidence,
            scope=magazine.slug,
        )
        return True

    def end(
        self,
        session: Session,
        subscriber: Subscriber,
        magazines: Iterable[Magazine],
        evidence: Evidence,
        status: SubscriptionStatus = SubscriptionStatus.unsubscribed,
    ) -> int:
        """Stop the given subscriptions at once (unsubscribe, complaint, erasure)."""
        assert subscriber.id is not None
        session.flush()
        ended = self.end_on(
            session.connection(),
            Person(subscriber.id, subscriber.email, subscriber.address_digest),
            {m.id or 0: m.slug for m in magazines},
            evidence,
            status,
        )
        for held in list(session.identity_map.values()):  # their copies are stale now
            if isinstance(held, Subscription) and held.subscriber_id == subscriber.id:
                session.expire(held)
        return ended

    def end_on(
        self,
        conn: Connection,
        person: Person,
        magazines: Mapping[int, str],
        evidence: Evidence,
        status: SubscriptionStatus = SubscriptionStatus.unsubscribed,
    ) -> int:
        """``end`` on a connection, in its transaction, without the ORM."""
        return self.end_all(conn, [Change(person, magazines, evidence)], status)[0]

    def end_all(
        self,
        conn: Connection,
        changes: Sequence[Change],
        status: SubscriptionStatus = SubscriptionStatus.unsubscribed,
    ) -> list[int]:
        """Many ``end_on`` in a few statements, whatever their number (the one-clicks of a
        group commit): the live subscriptions among each change's magazines end, each with
        its withdrawal in the ledger and notices to the parties that hold the address. An
        ended one is left as it is, so a repeated request changes nothing; two requests for
        the same subscription end it once, for the first. Returns how many each ended."""
        assert status in (SubscriptionStatus.unsubscribed, SubscriptionStatus.suppressed)
        pairs = sorted({(e.person.id, m) for e in changes for m in e.magazines})
        if not pairs:
            return [0] * len(changes)
        now = utcnow()
        people = sorted({person for person, _ in pairs})
        ended_rows = conn.execute(
            _END, {"people": people, "pairs": pairs, "to": status, "now": now}
        )
        live = {(int(person), int(magazine)) for person, magazine in ended_rows}
        counts, withdrawals, events = [], [], []
        purpose = ConsentPurpose.magazine
        for change in changes:
            person, evidence = change.person, change.evidence
            ended = [m for m in change.magazines if (person.id, m) in live]
            live.difference_update((person.id, m) for m in ended)
            for magazine_id in ended:
                slug = change.magazines[magazine_id]
                withdrawals.append(parties.Withdrawal(person, purpose, slug, evidence.channel))
                events.append(
                    consent.event_row(
                        subscriber_id=person.id,
                        subject_digest=person.address_digest,
                        purpose=purpose,
                        action=ConsentAction.withdrawn,
                        evidence=evidence,
                        scope=slug,
                        occurred_at=now,
                    )
                )
            counts.append(len(ended))
        parties.notify_all(conn, withdrawals)
        consent.append_rows(conn, events)
        return counts

    # --- joint use and foreign transfer ------------------------------------------------------

    def grant(
        self,
        session: Session,
        subscriber: Subscriber,
        purpose: ConsentPurpose,
        evidence: Evidence,
        scope: str = "",
    ) -> None:
        assert purpose is not ConsentPurpose.magazine
        self._event(session, subscriber, purpose, ConsentAction.granted, evidence, scope=scope)

    def grant_confirmed(
        self,
        session: Session,
        subscriber: Subscriber,
        purpose: ConsentPurpose,
        evidence: Evidence,
        scope: str = "",
    ) -> None:
        """A grant from someone who already proved their mailbox (a signed link)."""
        self.grant(session, subscriber, purpose, evidence, scope=scope)
        self._event(session, subscriber, purpose, ConsentAction.confirmed, evidence, scope=scope)

    def withdraw(
        self, session: Session, subscriber: Subscriber, purpose: ConsentPurpose, evidence: Evidence
    ) -> int:
        """Withdraw every live consent of ``purpose`` (all countries for foreign transfer)."""
        withdrawn = 0
        for (event_purpose, scope), action in self.consent_state(session, subscriber).items():
            if event_purpose is purpose and action is not ConsentAction.withdrawn:
                self._event(
                    session, subscriber, purpose, ConsentAction.withdrawn, evidence, scope=scope
                )
                withdrawn += 1
        return withdrawn

    def withdraw_unconfirmed(
        self, session: Session, subscriber: Subscriber, evidence: Evidence
    ) -> int:
        """Withdraw joint-use and transfer grants never confirmed (an expired sign-up)."""
        withdrawn = 0
        for (purpose, scope), action in self.consent_state(session, subscriber).items():
            if purpose is not ConsentPurpose.magazine and action is ConsentAction.granted:
                self._event(
                    session, subscriber, purpose, ConsentAction.withdrawn, evidence, scope=scope
                )
                withdrawn += 1
        return withdrawn

    def consent_state(
        self, session: Session, subscriber: Subscriber
    ) -> dict[tuple[ConsentPurpose, str], ConsentAction]:
        """The latest action per (purpose, scope), from the ledger."""
        state: dict[tuple[ConsentPurpose, str], ConsentAction] = {}
        for event in consent.history(session, subscriber_id=subscriber.id or 0):
            state[(event.purpose, event.scope)] = event.action
        return state

    def _unconfirmed_grants(
        self, session: Session, subscriber: Subscriber
    ) -> list[tuple[ConsentPurpose, str, str | None]]:
        latest: dict[tuple[ConsentPurpose, str], ConsentEvent] = {}
        for event in consent.history(session, subscriber_id=subscriber.id or 0):
            latest[(event.purpose, event.scope)] = event
        return [
            (purpose, scope, event.notice_hash)
            for (purpose, scope), event in latest.items()
            if event.action is ConsentAction.granted
        ]
