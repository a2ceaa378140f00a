"""What a subscriber does for themselves through their signed links: preferences, corrections,
unsubscribing, exporting their data and erasing themselves.

Erasure deletes the profile and subscriptions, keeps a keyed hash of the address in the
suppression list (so no import or sign-up mails them again without a fresh opt-in), and
keeps the consent ledger rows with their personal fields blanked: the law needs the proof
of what was agreed and withdrawn, not the person's IP or browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.models import Delivery, Issue
from subscriptions import consent
from subscriptions.addresses import AddressHasher
from subscriptions.consent import Evidence
from subscriptions.lifecycle import LIVE, Lifecycle
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentEvent,
    ConsentPurpose,
    Magazine,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    SystemMail,
    localised,
)
from subscriptions.profile import PROFILE, clean_profile
from subscriptions.suppression import suppress
from subscriptions.transfers import transfers_of

LIVE_CONSENT = (ConsentAction.granted, ConsentAction.confirmed)


@dataclass(frozen=True, slots=True)
class MagazineChoice:
    slug: str
    title: str
    description: str
    status: SubscriptionStatus | None

    @property
    def receiving(self) -> bool:
        return self.status is SubscriptionStatus.confirmed


@dataclass(frozen=True, slots=True)
class PreferencesView:
    subscriber: Subscriber
    magazines: list[MagazineChoice]
    joint_use: bool
    foreign_transfer: bool
    history: list[ConsentEvent]


class SelfService:
    def __init__(self, *, lifecycle: Lifecycle, hasher: AddressHasher) -> None:
        self.lifecycle = lifecycle
        self.hasher = hasher

    def view(self, session: Session, subscriber: Subscriber, locale: str) -> PreferencesView:
        subscriptions = self.lifecycle.subscriptions(session, subscriber)
        magazines = session.exec(
            select(Magazine).where(Magazine.active).order_by(col(Magazine.id))
        ).all()
        choices = [
            MagazineChoice(
                slug=m.slug,
                title=localised(m.title, locale),
                description=localised(m.description, locale),
                status=subscriptions[m.id].status if m.id in subscriptions else None,
            )
            for m in magazines
        ]
        state = self.lifecycle.consent_state(session, subscriber)
        return PreferencesView(
            subscriber=subscriber,
            magazines=choices,
            joint_use=state.get((ConsentPurpose.joint_use, "")) in LIVE_CONSENT,
            foreign_transfer=any(
                purpose is ConsentPurpose.foreign_transfer and action in LIVE_CONSENT
                for (purpose, _), action in state.items()
            ),
            history=consent.history(session, subscriber_id=subscriber.id or 0),
        )

    def update(
        self,
        session: Session,
        subscriber: Subscriber,
        *,
        magazines: set[str],
        profile: dict[str, str | None],
        joint_use: bool,
        foreign_transfer: bool,
        foreign_countries: list[str],
        evidence: Evidence,
    ) -> None:
        """Apply the preferences form: each change is its own consent event. The profile is
        checked first (``InvalidFields`` naming every field that may not be stored, before
        anything is written)."""
        profile = clean_profile({field: profile.get(field) for field in PROFILE})
        current = self.lifecycle.subscriptions(session, subscriber)
        for magazine in session.exec(select(Magazine).where(Magazine.active)).all():
            existing = current.get(magazine.id or 0)
            state = existing.status if existing else None
            if magazine.slug in magazines and state is not SubscriptionStatus.confirmed:
                self.lifecycle.opt_in_confirmed(session, subscriber, magazine, evidence)
            elif magazine.slug not in magazines and state in LIVE:
                self.lifecycle.end(session, subscriber, [magazine], evidence)
        view_state = self.lifecycle.consent_state(session, subscriber)
        has_joint = view_state.get((ConsentPurpose.joint_use, "")) in LIVE_CONSENT
        foreign_transfer = foreign_transfer and joint_use
        if joint_use and not has_joint:
            self.lifecycle.grant_confirmed(session, subscriber, ConsentPurpose.joint_use, evidence)
        if not joint_use and has_joint:
            self.lifecycle.withdraw(session, subscriber, ConsentPurpose.joint_use, evidence)
        live_countries = {
            scope
            for (purpose, scope), action in view_state.items()
            if purpose is ConsentPurpose.foreign_transfer and action in LIVE_CONSENT
        }
        if foreign_transfer:
            for code in foreign_countries:
                if code not in live_countries:
                    self.lifecycle.grant_confirmed(
                        session, subscriber, ConsentPurpose.foreign_transfer, evidence, scope=code
                    )
        elif live_countries:
            self.lifecycle.withdraw(session, subscriber, ConsentPurpose.foreign_transfer, evidence)
        changed = False
        for field, value in profile.items():
            if getattr(subscriber, field) != value:
                setattr(subscriber, field, value)
                changed = True
        if changed:
            subscriber.updated_at = utcnow()
            session.add(subscriber)
        session.commit()

    def has_live(self, session: Session, subscriber: Subscriber, scope: str) -> bool:
        """Whether the person still has a pending or confirmed subscription in ``scope`` (a
        magazine's slug, or every magazine when empty)."""
        query = (
            select(Subscription.id)
            .where(Subscription.subscriber_id == subscriber.id)
            .where(col(Subscription.status).in_(LIVE))
        )
        if scope:
            query = query.join(Magazine, col(Magazine.id) == Subscription.magazine_id).where(
                Magazine.slug == scope
            )
        return session.exec(query.limit(1)).first() is not None

    def unsubscribe(
        self, session: Session, subscriber: Subscriber, scope: str, evidence: Evidence
    ) -> int:
        """Stop one magazine (``scope`` = its slug) or, with an empty scope, all of them."""
        query = select(Magazine)
        if scope:
            query = query.where(Magazine.slug == scope)
        ended = self.lifecycle.end(session, subscriber, session.exec(query).all(), evidence)
        session.commit()
        return ended

    def export(self, session: Session, subscriber: Subscriber) -> dict[str, Any]:
        """Everything mailmag holds about the person, as JSON-ready data."""
        subscriptions = session.exec(
            select(Subscription, Magazine)
            .join(Magazine, col(Magazine.id) == Subscription.magazine_id)
            .where(Subscription.subscriber_id == subscriber.id)
        ).all()
        deliveries = session.exec(
            select(Delivery, Issue)
            .join(Issue, col(Issue.id) == Delivery.issue_id)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(col(Delivery.id))
        ).all()
        return {
            "exported_at": utcnow().isoformat(),
            "profile": {
                "email": subscriber.email,
                **{field: getattr(subscriber, field) for field in PROFILE},
                "locale": subscriber.locale,
                "created_at": subscriber.created_at.isoformat(),
                "updated_at": subscriber.updated_at.isoformat(),
            },
            "subscriptions": [
                {
                    "magazine": magazine.slug,
                    "status": sub.status.value,
                    "requested_at": sub.created_at.isoformat(),
                    "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else None,
                    "ended_at": sub.ended_at.isoformat() if sub.ended_at else None,
                }
                for sub, magazine in subscriptions
            ],
            "consent_events": [
                consent.evidence_row(e)
                for e in consent.history(session, subscriber_id=subscriber.id or 0)
            ],
            "deliveries": [
                {
                    "issue": issue.subject,
                    "status": delivery.status.value,
                    "sent_at": delivery.sent_at.isoformat() if delivery.sent_at else None,
                }
                for delivery, issue in deliveries
            ],
            "transfers": transfers_of(session, subscriber),
        }

    def erase(
        self, session: Session, subscriber: Subscriber, evidence: Evidence, *, commit: bool = True
    ) -> None:
        """Erase the person, keeping only what proves consent and prevents re-mailing."""
        assert subscriber.id is not None
        erasure = Evidence(ConsentChannel.erasure, evidence.ip, evidence.user_agent)
        self.lifecycle.end(session, subscriber, session.exec(select(Magazine)).all(), erasure)
        for purpose in (ConsentPurpose.joint_use, ConsentPurpose.foreign_transfer):
            self.lifecycle.withdraw(session, subscriber, purpose, erasure)
        session.flush()
        suppress(
            session,
            digest=self.hasher.digest(subscriber.email),
            reason=SuppressionReason.erasure,
            replace=True,
        )
        consent.erase_personal_fields(session, subscriber_id=subscriber.id)
        session.execute(delete(SystemMail).where(col(SystemMail.recipient) == subscriber.email))
        session.delete(subscriber)
        if commit:
            session.commit()
