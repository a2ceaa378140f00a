"""Requests, complaints and consultations at the contact point (APPI Art. 33-35, 40).

A request names the address it concerns. It arrives from the person's preferences page (the
signed link already proves the mailbox, so it is verified at once), from the public contact
form, or is entered by staff after a phone call or letter; in the last two cases a mail to the
address must come back (``/verify/<token>``) before anyone acts on it. Each request is due
``due_days`` after it arrived (14 by default); privacy officers get one reminder mail a day
while any request is due within ``REMIND_BEFORE`` or late.

Completing a request performs it, in the same transaction as its outcome and audit entry:
a disclosure mails the person a link to their bundle (profile, subscriptions, consent
ledger, deliveries, transfer records), a correction changes the fields asked for, cessation
of use ends every subscription and suppresses the address, erasure erases, and cessation of
provision withdraws joint use and foreign transfer (the joint users are told through the
opt-out hand-over). The person is told the outcome by mail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.ratelimit import Limit, RateLimiter, SlidingWindow
from subscriptions import audit
from subscriptions.addresses import AddressHasher, normalise_address
from subscriptions.audit import Actor
from subscriptions.consent import Evidence
from subscriptions.errors import BadToken, InvalidFields, InvalidInput
from subscriptions.i18n import N_
from subscriptions.links import Links
from subscriptions.models import (
    ConsentChannel,
    ConsentPurpose,
    PrivacyRequest,
    RequestChannel,
    RequestKind,
    RequestStatus,
    StaffRole,
    StaffUser,
    Subscriber,
    SuppressionReason,
)
from subscriptions.profile import PROFILE, clean_field, clean_line, clean_message, clean_profile
from subscriptions.self_service import SelfService
from subscriptions.suppression import suppress_subscriber
from subscriptions.system_mail import SystemMailer
from subscriptions.tokens import Action

REMIND_BEFORE = timedelta(days=3)
REMIND_EVERY = timedelta(days=1)
CORRECTABLE = PROFILE
ACTIONABLE = frozenset(
    {
        RequestKind.disclosure,
        RequestKind.correction,
        RequestKind.cessation,
        RequestKind.erasure,
        RequestKind.stop_provision,
    }
)
OPEN = (RequestStatus.awaiting_verification, RequestStatus.open)

SUBJECTS = {
    "verify": N_("Please confirm your request"),
    "done": N_("Your request has been answered"),
    "reminder": N_("Privacy requests are due"),
}


@dataclass
class Desk:
    """The contact point's services: who the person is, how to mail them, how to act."""

    hasher: AddressHasher
    links: Links
    mailer: SystemMailer
    self_service: SelfService
    due_days: int = 14
    # the public contact form: per client an hour, per address a day (verification mails)
    per_client: RateLimiter = field(default_factory=lambda: SlidingWindow(Limit(10, 3600)))
    per_address: RateLimiter = field(default_factory=lambda: SlidingWindow(Limit(3, 86400)))

    # --- arrival ------------------------------------------------------------------------------

    def receive(
        self,
        session: Session,
        *,
        kind: RequestKind,
        address: str,
        channel: RequestChannel,
        message: str = "",
        correction: dict[str, str] | None = None,
        entered_by: str = "",
        locale: str = "en",
    ) -> PrivacyRequest:
        """Record a request; unless it came through the person's own signed link, mail the
        address a link that proves the request is theirs. ``InvalidFields`` names every
        field of the request form that is refused (``address``, ``text``,
        ``correction_field``, ``correction_value``) before anything is written."""
        problems: dict[str, str] = {}
        email = ""
        try:
            email = normalise_address(address)
        except InvalidInput as exc:
            problems["address"] = exc.message
        try:
            message = clean_message("text", message)
        except InvalidInput as exc:
            problems["text"] = exc.message
        checked: dict[str, str] = {}
        try:
            checked = self.checked_correction(kind, correction or {})
        except InvalidFields as exc:
            problems.update(exc.problems)
        if problems:
            raise InvalidFields(problems)
        digest = self.hasher.digest(email)
        subscriber = session.exec(
            select(Subscriber).where(Subscriber.address_digest == digest)
        ).first()
        now = utcnow()
        verified = channel is RequestChannel.preferences
        request = PrivacyRequest(
            kind=kind,
            status=RequestStatus.open if verified else RequestStatus.awaiting_verification,
            channel=channel,
            address=email,
            subscriber_id=subscriber.id if subscriber else None,
            subject_digest=digest,
            message=message,
            correction=checked,
            received_at=now,
            verified_at=now if verified else None,
            due_at=now + timedelta(days=self.due_days),
            entered_by=entered_by,
        )
        session.add(request)
        session.flush()
        if not verified:
            self.send_verification(session, request, locale)
        return request

    @staticmethod
    def checked_correction(kind: RequestKind, correction: dict[str, str]) -> dict[str, str]:
        """The fields a request asks to correct, each with its right value as it would be
        stored; ``InvalidFields`` (``correction_field``, ``correction_value``) for an item
        that cannot be corrected, a value that may not be stored, or a correction request
        that names no item or no value."""
        problems: dict[str, str] = {}
        checked: dict[str, str] = {}
        for name, value in correction.items():
            if name not in PROFILE:
                problems["correction_field"] = N_("This item cannot be corrected.")
                continue
            try:
                cleaned = clean_field(name, value)
            except InvalidInput as exc:
                problems["correction_value"] = exc.message
                continue
            if cleaned is not None:
                checked[name] = cleaned
            elif kind is RequestKind.correction:
                problems["correction_value"] = N_("Please give the right value.")
        if kind is RequestKind.correction and not correction:
            problems["correction_field"] = N_("Please choose the item to correct.")
        if problems:
            raise InvalidFields(problems)
        return checked

    def correct(
        self,
        session: Session,
        subscriber: Subscriber,
        changes: Mapping[str, str | None],
        *,
        actor: Actor,
        reason: str,
    ) -> None:
        """A correction made by the privacy officer (after a phone call or letter): the
        fields are checked as every path checks them (``InvalidFields``), a value None or
        empty clears its field, and the fields changed and the reason (not the values,
        which would copy personal data into the log) go into the audit log."""
        reason = clean_line("reason", reason, limit=500)
        if len(reason) < 3:
            raise InvalidInput("reason", N_("Please give the reason."))
        _apply_correction(session, subscriber, changes)
        audit.record(
            session,
            actor,
            "subscriber.corrected",
            target=f"subscriber:{subscriber.id}",
            detail={"fields": sorted(changes), "reason": reason},
            subjects=[subscriber.address_digest],
        )

    def send_verification(self, session: Session, request: PrivacyRequest, locale: str) -> None:
        assert request.id is not None
        token = self.links.signer.make(Action.verify, str(request.id), request.subject_digest)
        self.mailer.queue(
            session,
            "verify_request",
            recipient=request.address,
            locale=locale,
            subject=SUBJECTS["verify"],
            request_kind=request.kind.value,
            address=request.address,
            verify_url=f"{self.links.policy.base_url.rstrip('/')}/verify/{token}",
        )

    def read_verification(self, session: Session, token: str) -> PrivacyRequest:
        """The request a verification link names; ``BadToken`` for a forged or old link, or
        one whose request is gone."""
        subject, digest = self.links.read(Action.verify, token)
        request = session.get(PrivacyRequest, int(subject)) if subject.isdigit() else None
        if request is None or request.subject_digest != digest:
            raise BadToken(N_("This link is not valid."))
        return request

    def verify(self, session: Session, request: PrivacyRequest) -> None:
        if request.status is RequestStatus.awaiting_verification:
            request.status = RequestStatus.open
            request.verified_at = utcnow()
            session.add(request)

    # --- acting -------------------------------------------------------------------------------

    def complete(
        self, session: Session, request: PrivacyRequest, actor: Actor, outcome: str
    ) -> None:
        """Perform the request and record its outcome; the person is told by mail."""
        if request.status is not RequestStatus.open:
            raise InvalidInput(
                "status", f"a request that is {request.status.value} cannot be completed"
            )
        outcome = clean_message("outcome", outcome)
        subscriber = (
            session.get(Subscriber, request.subscriber_id) if request.subscriber_id else None
        )
        performed = self._perform(session, request, subscriber)
        self._close(session, request, actor, RequestStatus.completed, outcome, performed)
        self._tell(session, request, subscriber, performed, outcome)

    def reject(self, session: Session, request: PrivacyRequest, actor: Actor, reason: str) -> None:
        if request.status not in OPEN:
            raise InvalidInput(
                "status", f"a request that is {request.status.value} cannot be rejected"
            )
        if not reason.strip():
            raise InvalidInput("outcome", "a rejection gives its reason")
        reason = clean_message("outcome", reason)
        self._close(session, request, actor, RequestStatus.rejected, reason, "rejected")
        if request.status is RequestStatus.rejected and request.verified_at is not None:
            self._tell(session, request, None, "rejected", reason)

    def _perform(
        self, session: Session, request: PrivacyRequest, subscriber: Subscriber | None
    ) -> str:
        kind = request.kind
        if kind not in ACTIONABLE:
            return "answered"
        if subscriber is None:
            return "no data held"
        evidence = Evidence(ConsentChannel.staff)
        if kind is RequestKind.correction:
            # Checked again: a request stored before the checks were what they are now may
            # hold a value that must not reach the profile (refused: InvalidFields).
            _apply_correction(session, subscriber, request.correction)
            return "corrected: " + ", ".join(sorted(request.correction))
        if kind is RequestKind.cessation:
            suppress_subscriber(
                session,
                self.self_service.lifecycle,
                subscriber,
                reason=SuppressionReason.manual,
                channel=ConsentChannel.staff,
                note=f"privacy request {request.id}: cessation of use",
            )
            for purpose in (ConsentPurpose.joint_use, ConsentPurpose.foreign_transfer):
                self.self_service.lifecycle.withdraw(session, subscriber, purpose, evidence)
            return "use stopped"
        if kind is RequestKind.stop_provision:
            count = sum(
                self.self_service.lifecycle.withdraw(session, subscriber, purpose, evidence)
                for purpose in (ConsentPurpose.joint_use, ConsentPurpose.foreign_transfer)
            )
            return f"provision stopped ({count} consents withdrawn)"
        if kind is RequestKind.erasure:
            request.subscriber_id = None
            session.add(request)
            self.self_service.erase(session, subscriber, evidence, commit=False)
            return "erased"
        return "disclosed"  # the bundle is built when the person opens their link

    def _close(
        self,
        session: Session,
        request: PrivacyRequest,
        actor: Actor,
        status: RequestStatus,
        outcome: str,
        performed: str,
    ) -> None:
        request.status = status
        request.completed_at = utcnow()
        request.outcome = outcome
        request.handled_by = actor.name[:200]
        session.add(request)
        audit.record(
            session,
            actor,
            f"privacy_request.{status.value}",
            target=f"request:{request.id} {request.kind.value}",
            detail={"performed": performed},
            subjects=[request.subject_digest],
        )

    def _tell(
        self,
        session: Session,
        request: PrivacyRequest,
        subscriber: Subscriber | None,
        performed: str,
        outcome: str,
    ) -> None:
        link = None
        if request.kind is RequestKind.disclosure and subscriber is not None:
            token = self.links.signer.make(Action.disclosure, subscriber.token_key, str(request.id))
            link = f"{self.links.policy.base_url.rstrip('/')}/disclosure/{token}"
        self.mailer.queue(
            session,
            "request_done",
            recipient=request.address,
            locale=subscriber.locale if subscriber else "en",
            subject=SUBJECTS["done"],
            request_kind=request.kind.value,
            performed=performed,
            outcome=outcome,
            disclosure_url=link,
        )

    # --- disclosure -----------------------------------------------------------------------------

    def disclosure(self, session: Session, token: str) -> tuple[Subscriber, dict[str, Any]] | None:
        key, request_id = self.links.read(Action.disclosure, token)
        subscriber = session.exec(select(Subscriber).where(Subscriber.token_key == key)).first()
        if subscriber is None:
            return None
        bundle = self.self_service.export(session, subscriber)
        bundle["request"] = request_id
        return subscriber, bundle

    # --- reminders ------------------------------------------------------------------------------

    def remind(self, session: Session) -> int:
        """One mail to every active privacy officer when requests are due soon or late and
        no reminder went out today; how many requests it named."""
        now = utcnow()
        due = session.exec(
            select(PrivacyRequest)
            .where(
                col(PrivacyRequest.status).in_(OPEN),
                col(PrivacyRequest.due_at) <= now + REMIND_BEFORE,
                or_(
                    col(PrivacyRequest.reminded_at).is_(None),
                    col(PrivacyRequest.reminded_at) <= now - REMIND_EVERY,
                ),
            )
            .order_by(col(PrivacyRequest.due_at))
        ).all()
        if not due:
            return 0
        officers = session.exec(
            select(StaffUser).where(
                StaffUser.role == StaffRole.privacy_officer, col(StaffUser.active)
            )
        ).all()
        lines = [
            {
                "id": r.id,
                "kind": r.kind.value,
                "due": r.due_at.strftime("%Y-%m-%d"),
                "late": r.due_at <= now,
            }
            for r in due
        ]
        for officer in officers:
            self.mailer.queue(
                session,
                "request_reminder",
                recipient=officer.email,
                locale="en",
                subject=SUBJECTS["reminder"],
                requests=lines,
                admin_url=f"{self.links.policy.base_url.rstrip('/')}/admin/requests",
            )
        for request in due:
            request.reminded_at = now
            session.add(request)
        return len(due)


def _apply_correction(
    session: Session, subscriber: Subscriber, changes: Mapping[str, str | None]
) -> None:
    for name, value in clean_profile(changes).items():
        setattr(subscriber, name, value)
    subscriber.updated_at = utcnow()
    session.add(subscriber)
