"""Sign-up and double opt-in: the flow behind ``/subscribe`` and the confirmation link.

A sign-up is checked in this order, so that abuse costs nothing: the input (address,
magazines, the notice shown), the form's signed token, the rate limits; only then is
anything written. The form token is single-use (its nonce is stored in the same transaction
as the sign-up). The pending subscription, the consent events and the confirmation mail are
committed together before the visitor is answered.

The answer never tells whether the address was new, pending, confirmed or unsubscribed; what
differs is only the mail the address receives (a confirmation request, or "you are already
subscribed, here is your preferences link"), at most one per ``notify_interval_hours``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import bindparam, delete, func, true
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.models import Delivery, Issue
from mailer.ratelimit import RateLimiter, check_in_turn
from mailer.verp import TOKEN_LENGTH, DeliveryTokens
from subscriptions import consent
from subscriptions.addresses import AddressHasher, normalise_address
from subscriptions.commits import one
from subscriptions.consent import Evidence
from subscriptions.db import insert_new, table_of
from subscriptions.errors import BadToken, InvalidFields, InvalidInput, RateLimited
from subscriptions.i18n import N_
from subscriptions.lifecycle import Change, Lifecycle
from subscriptions.links import Links, Named
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentPurpose,
    FormNonce,
    Magazine,
    NoticeVersion,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SystemMail,
    localised,
)
from subscriptions.notice import NoticeBook, record_notice
from subscriptions.parties import Person
from subscriptions.profile import PROFILE, Phone, ProfileText
from subscriptions.registry import Registry
from subscriptions.system_mail import OutgoingMail, SystemMailer
from subscriptions.tokens import Action, new_token_key

# Fresh preferences links mailed to one person a day at most, however often a message's
# "manage your preferences" page is asked: enough for a mail lost to a spam folder, too few
# for a holder of many delivery tokens (a processor) to flood people with them.
PREFERENCES_LINK_MAILS = 3


class SignUpRequest(BaseModel):
    """What the sign-up form and the JSON API accept."""

    model_config = ConfigDict(extra="forbid", str_max_length=2000)

    email: str = Field(max_length=320)
    magazines: list[Annotated[str, StringConstraints(max_length=64)]] = Field(max_length=50)
    name: ProfileText | None = None
    company: ProfileText | None = None
    department: ProfileText | None = None
    title: ProfileText | None = None
    phone: Phone | None = None
    locale: Literal["en", "ja"] = "en"
    joint_use: bool = False
    foreign_transfer: bool = False
    notice_hash: str = Field(max_length=64)
    form_token: str = Field(max_length=512)


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking: the IP and user agent recorded as evidence."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class LinkKey:
    """Whom a link names, before their row is read back: their token key."""

    token_key: str


@dataclass(frozen=True, slots=True)
class UnsubscribeLink:
    """A checked unsubscribe token: a delivery's, or a person's link key with its scope."""

    delivery_id: int | None = None
    key: str = ""
    scope: str = ""


@dataclass(frozen=True, slots=True)
class Unsubscribing:
    """The person an unsubscribe link names, and the magazines (id to slug) it covers."""

    person: Person
    token_key: str
    magazines: dict[int, str]


_PEOPLE = table_of(Subscriber)
# People are matched by the digest of their address, which names the mailbox whatever the
# case of its spelling (``ALICE@`` is the known ``alice@``), through its unique index.
_KNOWN = core_select(_PEOPLE.c.address_digest).where(
    _PEOPLE.c.address_digest.in_(bindparam("digests", expanding=True))
)
_DELIVERY = table_of(Delivery)
_ISSUE = table_of(Issue)
_SUBJECT = (_PEOPLE.c.id, _PEOPLE.c.email, _PEOPLE.c.address_digest, _PEOPLE.c.token_key)
_MAGAZINE = table_of(Magazine)
# The people the keys name, each with every magazine (none: a row with NULLs), in one query.
_KEY_SUBJECTS = (
    core_select(*_SUBJECT, _MAGAZINE.c.id.label("magazine_id"), _MAGAZINE.c.slug)
    .select_from(_PEOPLE.outerjoin(_MAGAZINE, true()))
    .where(_PEOPLE.c.token_key.in_(bindparam("keys", expanding=True)))
    .order_by(_MAGAZINE.c.id)
)
_DELIVERY_SUBJECTS = (
    core_select(
        _DELIVERY.c.id.label("delivery_id"),
        *_SUBJECT,
        _MAGAZINE.c.id.label("magazine_id"),
        _MAGAZINE.c.slug,
    )
    .select_from(_DELIVERY)
    .join(_ISSUE, _ISSUE.c.id == _DELIVERY.c.issue_id)
    .join(_MAGAZINE, _MAGAZINE.c.id == _ISSUE.c.magazine_id)
    .outerjoin(_PEOPLE, _PEOPLE.c.id == _DELIVERY.c.subscriber_id)
    .where(_DELIVERY.c.id.in_(bindparam("deliveries", expanding=True)))
)
_MAGAZINES = core_select(_MAGAZINE.c.id, _MAGAZINE.c.slug)
_ACTIVE_MAGAZINES = _MAGAZINES.where(
    _MAGAZINE.c.slug.in_(bindparam("slugs", expanding=True)), _MAGAZINE.c.active
)
_NONCES = table_of(FormNonce)
_NOTICES = table_of(NoticeVersion)
_NOTICES_ON_FILE = core_select(_NOTICES.c.content_hash).where(
    _NOTICES.c.content_hash.in_(bindparam("hashes", expanding=True))
)


@dataclass(frozen=True, slots=True)
class CheckedSignUp:
    """A sign-up that passed every check that writes nothing: what ``record_sign_up`` stores,
    with the digest of its address, the link key a new person gets and their confirmation
    mail, already rendered."""

    email: str
    digest: str
    request: SignUpRequest
    nonce: str
    evidence: Evidence
    token_key: str
    confirmation: OutgoingMail


@dataclass(frozen=True, slots=True)
class OptInPolicy:
    pending: timedelta
    notify_interval: timedelta


class OptIn:
    def __init__(
        self,
        *,
        registry: Registry,
        notices: NoticeBook,
        hasher: AddressHasher,
        lifecycle: Lifecycle,
        links: Links,
        deliveries: DeliveryTokens,
        mailer: SystemMailer,
        per_ip: RateLimiter,
        per_address: RateLimiter,
        policy: OptInPolicy,
    ) -> None:
        self.deliveries = deliveries
        self.registry = registry
        self.notices = notices
        self.hasher = hasher
        self.lifecycle = lifecycle
        self.links = links
        self.mailer = mailer
        self.per_ip = per_ip
        self.per_address = per_address
        self.policy = policy

    # --- the form ------------------------------------------------------------------------------

    def new_form_token(self) -> str:
        return self.links.form_token(secrets.token_urlsafe(16))

    # --- sign-up -------------------------------------------------------------------------------

    def sign_up(
        self, session: Session, request: SignUpRequest, client: Client, channel: ConsentChannel
    ) -> None:
        """Record a sign-up durably, or raise before writing anything."""
        # Checked before the session's transaction begins: a rate limit kept in the database
        # counts in a transaction of its own, which must not wait for this one's write lock.
        checked = self.check_sign_up(request, client, channel)
        self.record_sign_up(session.connection(), checked)
        session.commit()

    def input_errors(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every refusal of a sign-up's own values at once, field by field (what a form shows
        next to each field): the address, at least one magazine, the fields the registry
        requires, and transfer abroad only with joint use. ``values`` are the request's
        fields, checked or raw, so a form whose other fields did not parse still shows
        these. The first one is what ``check_sign_up`` refuses with."""
        errors: dict[str, str] = {}
        try:
            normalise_address(str(values.get("email") or ""))
        except InvalidInput as exc:
            errors[exc.field] = exc.message
        if not values.get("magazines"):
            errors["magazines"] = N_("Choose at least one magazine.")
        for field in self.registry.fields.required:
            if field != "email" and not str(values.get(field) or "").strip():
                errors.setdefault(field, N_("This field is required."))
        if values.get("foreign_transfer") and not values.get("joint_use"):
            errors["foreign_transfer"] = N_(
                "Transfer abroad can only be agreed together with joint use."
            )
        return errors

    def check_sign_up(
        self, request: SignUpRequest, client: Client, channel: ConsentChannel
    ) -> CheckedSignUp:
        """Every check of a sign-up that needs no database, and the work that needs no write
        turn (the confirmation mail a new address will get is rendered here); raises
        ``InvalidInput`` (``InvalidFields`` naming every field ``input_errors`` refuses),
        ``BadToken`` or ``RateLimited``."""
        errors = self.input_errors(request.model_dump())
        if errors:
            raise InvalidFields(errors)
        email = normalise_address(request.email)
        if not self.notices.is_current(request.notice_hash):
            raise InvalidInput(
                "notice",
                N_(
                    "The privacy notice has changed since the form was shown. "
                    "Please review it and submit again."
                ),
            )
        nonce = self.links.read_form_token(request.form_token)
        # Both limits in one check (one statement when they are kept in the database); the
        # address is counted only if the network was allowed.
        refused = check_in_turn(
            [(self.per_ip, client.ip or "unknown"), (self.per_address, email.lower())]
        )
        if refused is not None:
            which, wait = refused
            refusal = (
                N_("Too many sign-ups from your network. Please try again later."),
                N_("Too many sign-ups for this address. Please try again later."),
            )[which]
            raise RateLimited(refusal, retry_after=int(wait) + 1)
        notice = self.notices.current(request.locale)
        token_key = new_token_key()
        return CheckedSignUp(
            email=email,
            digest=self.hasher.digest(email),
            request=request,
            nonce=nonce,
            evidence=Evidence(channel, client.ip, client.user_agent, notice.content_hash),
            token_key=token_key,
            confirmation=self._confirmation(email, request.locale, LinkKey(token_key)),
        )

    def record_sign_up(self, conn: Connection, checked: CheckedSignUp) -> None:
        """Write a checked sign-up in ``conn``'s transaction; the caller commits. The
        form's nonce is spent here, so a form sent twice is refused (``BadToken``) even when
        both were checked at once; the magazines asked for are looked up here (in the
        transaction that is there anyway: ``InvalidInput`` if one is unknown)."""
        one(self.record_sign_ups, conn, checked)

    def record_sign_ups(
        self, conn: Connection, batch: Sequence[CheckedSignUp]
    ) -> list[Exception | None]:
        """``record_sign_up`` for many at once (the sign-ups of a group commit): one outcome
        per sign-up, in order, None or the exception that refused it (having written
        nothing). New addresses asking for magazines only, the common case, are written
        together in a few Core statements whatever their number; anything else (a known
        address, joint use or transfer asked, the same address twice) goes through the ORM,
        each in a savepoint of its own."""
        outcomes: list[Exception | None] = [None] * len(batch)
        asked = self._asked(conn, batch, outcomes)
        self._spend_nonces(conn, batch, asked, outcomes)
        self._notices_on_file(conn, {batch[n].request.locale for n in asked})
        new = self._sign_up_new(conn, batch, asked)
        for n, magazines in asked.items():
            if n in new:
                continue
            savepoint = conn.begin_nested()
            try:
                self._sign_up_known(conn, batch[n], magazines)
            except Exception as exc:  # refused or failed alone: undone alone
                savepoint.rollback()
                outcomes[n] = exc
            else:
                savepoint.commit()
        return outcomes

    @staticmethod
    def _asked(
        conn: Connection, batch: Sequence[CheckedSignUp], outcomes: list[Exception | None]
    ) -> dict[int, dict[int, str]]:
        """The active magazines each sign-up asked for (id to slug, in the order asked), by
        its place in the batch, in one query; ``InvalidInput`` in ``outcomes`` for a sign-up
        that named one that is not there."""
        wanted = sorted({slug for checked in batch for slug in checked.request.magazines})
        active: dict[str, int] = {}
        if wanted:
            active = {r.slug: int(r.id) for r in conn.execute(_ACTIVE_MAGAZINES, {"slugs": wanted})}
        asked = {}
        for n, checked in enumerate(batch):
            slugs = list(dict.fromkeys(checked.request.magazines))
            if not slugs:
                outcomes[n] = InvalidInput("magazines", N_("Choose at least one magazine."))
            elif any(slug not in active for slug in slugs):
                outcomes[n] = InvalidInput(
                    "magazines", N_("One of the chosen magazines does not exist.")
                )
            else:
                asked[n] = {active[slug]: slug for slug in slugs}
        return asked

    @staticmethod
    def _spend_nonces(
        conn: Connection,
        batch: Sequence[CheckedSignUp],
        asked: dict[int, dict[int, str]],
        outcomes: list[Exception | None],
    ) -> None:
        """Spend the forms' nonces in one statement; a sign-up whose nonce was spent before,
        or earlier in the batch, is refused (``BadToken``) and leaves ``asked``."""
        first: dict[str, int] = {}
        for n in asked:
            first.setdefault(batch[n].nonce, n)
        now = utcnow()
        fresh = insert_new(FormNonce, conn.dialect.name).returning(_NONCES.c.nonce)
        spent = set(
            conn.execute(fresh, [{"nonce": nonce, "used_at": now} for nonce in first]).scalars()
            if first
            else []
        )
        for n in list(asked):
            if batch[n].nonce not in spent or first[batch[n].nonce] != n:
                outcomes[n] = BadToken(
                    N_("This form was already submitted. Please reload the page.")
                )
                del asked[n]

    def _notices_on_file(self, conn: Connection, locales: set[str]) -> None:
        """The notices shown for these locales, filed if this is their first sign-up."""
        notices = [self.notices.current(locale) for locale in sorted(locales)]
        if not notices:
            return
        hashes = sorted({notice.content_hash for notice in notices})
        on_file = set(conn.execute(_NOTICES_ON_FILE, {"hashes": hashes}).scalars())
        missing = {n.content_hash: n for n in notices if n.content_hash not in on_file}
        if missing:
            with Session(bind=conn) as session:
                for notice in missing.values():
                    record_notice(session, notice)
                session.commit()

    def _sign_up_new(
        self, conn: Connection, batch: Sequence[CheckedSignUp], asked: dict[int, dict[int, str]]
    ) -> set[int]:
        """The common sign-ups, addresses mailmag does not know asking for magazines only,
        written together: the people, their pending subscriptions with their grants, their
        confirmation requests rendered beforehand. Returns their places in the batch; the
        rest (a known address, joint use or transfer asked, an address twice in the batch or
        signed up in another transaction a moment ago) are left to the general path."""
        simple = [
            n
            for n in asked
            if not (batch[n].request.joint_use or batch[n].request.foreign_transfer)
        ]
        digests = sorted({batch[n].digest for n in simple})
        known = set(conn.execute(_KNOWN, {"digests": digests}).scalars()) if digests else set()
        first: dict[str, int] = {}
        for n in simple:
            if batch[n].digest not in known:
                first.setdefault(batch[n].digest, n)
        if not first:
            return set()
        now = utcnow()
        people = [
            {
                "email": batch[n].email,
                "address_digest": batch[n].digest,
                "token_key": batch[n].token_key,
                "locale": batch[n].request.locale,
                "notified_at": now,
                "created_at": now,
                "updated_at": now,
                **{field: getattr(batch[n].request, field) or None for field in PROFILE},
            }
            for n in first.values()
        ]
        fresh = insert_new(Subscriber, conn.dialect.name).returning(
            _PEOPLE.c.id, _PEOPLE.c.address_digest
        )
        ids = {digest: int(person_id) for person_id, digest in conn.execute(fresh, people)}
        new = [n for n in first.values() if batch[n].digest in ids]
        self.lifecycle.request_new(
            conn,
            [
                Change(
                    Person(ids[batch[n].digest], batch[n].email, batch[n].digest),
                    asked[n],
                    batch[n].evidence,
                )
                for n in new
            ],
            at=now,
        )
        self.mailer.queue_on(conn, *(batch[n].confirmation for n in new))
        return set(new)

    def _sign_up_known(
        self, conn: Connection, checked: CheckedSignUp, magazines: dict[int, str]
    ) -> None:
        """Any sign-up but a new address asking for magazines only, through the ORM."""
        request, evidence = checked.request, checked.evidence
        with Session(bind=conn, expire_on_commit=False) as session:
            subscriber = self._subscriber(session, checked, request)
            rows = session.exec(select(Magazine).where(col(Magazine.id).in_(magazines)))
            by_id = {m.id: m for m in rows}
            asked = [
                by_id[i]
                for i in magazines
                if self.lifecycle.request(session, subscriber, by_id[i], evidence)
            ]
            asked_consents = self._grant_consents(session, subscriber, request, evidence)
            self._notify(session, subscriber, needs_confirmation=bool(asked or asked_consents))
            session.commit()

    def _subscriber(
        self, session: Session, checked: CheckedSignUp, request: SignUpRequest
    ) -> Subscriber:
        """The person the address names, whatever the case it is spelled in now (their
        spelling stays as they first gave it), or a new person."""
        subscriber = session.exec(
            select(Subscriber).where(Subscriber.address_digest == checked.digest)
        ).first()
        profile = {field: getattr(request, field) or None for field in PROFILE}
        if subscriber is None:
            subscriber = Subscriber(
                email=checked.email, address_digest=checked.digest, locale=request.locale
            )
            for field, value in profile.items():
                setattr(subscriber, field, value)
            try:
                with session.begin_nested():
                    session.add(subscriber)
            except IntegrityError:  # the same address signed up a moment ago
                return self._subscriber(session, checked, request)
            return subscriber
        if not self._has_confirmed(session, subscriber):
            # Only an unconfirmed record may be rewritten by an anonymous form; a confirmed
            # person corrects their data through their own preferences link.
            for field, value in profile.items():
                setattr(subscriber, field, value)
            subscriber.locale = request.locale
            subscriber.updated_at = utcnow()
            session.add(subscriber)
        return subscriber

    @staticmethod
    def _has_confirmed(session: Session, subscriber: Subscriber) -> bool:
        return (
            session.exec(
                select(Subscription.id)
                .where(Subscription.subscriber_id == subscriber.id)
                .where(Subscription.status == SubscriptionStatus.confirmed)
            ).first()
            is not None
        )

    def _grant_consents(
        self, session: Session, subscriber: Subscriber, request: SignUpRequest, evidence: Evidence
    ) -> int:
        wanted: list[tuple[ConsentPurpose, str]] = []
        if request.joint_use:
            wanted.append((ConsentPurpose.joint_use, ""))
        if request.foreign_transfer:
            wanted += [
                (ConsentPurpose.foreign_transfer, c.code) for c in self.registry.foreign_countries
            ]
        if not wanted:
            return 0
        state = self.lifecycle.consent_state(session, subscriber)
        granted = 0
        for purpose, scope in wanted:
            if state.get((purpose, scope)) in (ConsentAction.granted, ConsentAction.confirmed):
                continue
            self.lifecycle.grant(session, subscriber, purpose, evidence, scope=scope)
            granted += 1
        return granted

    def ask_to_confirm(self, session: Session, subscriber: Subscriber) -> None:
        """Queue the confirmation request (at most one confirmation-type mail a day)."""
        self._notify(session, subscriber, needs_confirmation=True)

    def _notify(
        self, session: Session, subscriber: Subscriber, *, needs_confirmation: bool
    ) -> None:
        now = utcnow()
        if subscriber.notified_at and now - subscriber.notified_at < self.policy.notify_interval:
            return
        locale = subscriber.locale
        if needs_confirmation:
            self.mailer.queue_on(
                session.connection(), self._confirmation(subscriber.email, locale, subscriber)
            )
        else:
            self.mailer.queue(
                session,
                "already_subscribed",
                recipient=subscriber.email,
                locale=locale,
                subject=N_("You are already subscribed"),
                address=subscriber.email,
                preferences_url=self.links.url(Action.preferences, subscriber, lang=locale),
            )
        subscriber.notified_at = now
        session.add(subscriber)

    def _confirmation(self, email: str, locale: str, subscriber: Named) -> OutgoingMail:
        return self.mailer.prepare(
            "confirm",
            recipient=email,
            locale=locale,
            subject=N_("Please confirm your subscription"),
            address=email,
            confirm_url=self.links.url(Action.confirm, subscriber, lang=locale),
            days=self.policy.pending.days,
        )

    # --- confirmation --------------------------------------------------------------------------

    def subscriber_for(
        self, session: Session, action: Action, token: str
    ) -> tuple[Subscriber, str]:
        """The subscriber a valid link names, and its scope; ``BadToken`` otherwise. A
        message's delivery token names its recipient for unsubscribing only: for any other
        action it is refused here too, whatever route asks (``message_recipient`` is the
        one reading of it for the page that offers a fresh preferences link)."""
        if len(token) == TOKEN_LENGTH:
            if action is not Action.unsubscribe:
                raise BadToken(N_("This link is not valid."))
            return self._delivery_subject(session, token)
        key, scope = self.links.read(action, token)
        subscriber = session.exec(select(Subscriber).where(Subscriber.token_key == key)).first()
        if subscriber is None:
            raise BadToken(N_("This link is no longer valid."))
        return subscriber, scope

    def message_recipient(self, session: Session, token: str) -> Subscriber:
        """The recipient of the message whose "manage your preferences" link carries
        ``token``, for mailing them a fresh link: good as long as a preferences link."""
        subscriber, _slug = self._delivery_subject(session, token, max_age=Action.preferences)
        return subscriber

    def _delivery_subject(
        self, session: Session, token: str, max_age: Action = Action.unsubscribe
    ) -> tuple[Subscriber, str]:
        """The recipient of the delivery an issue's link names (its only identifier), and the
        magazine it came from; the link lasts as long as ``max_age``'s links (unsubscribe
        links as long as the delivery is kept)."""
        delivery_id = self.deliveries.read(token)
        row = None
        if delivery_id is not None:
            row = session.exec(
                select(Delivery, Magazine.slug)
                .join(Issue, col(Issue.id) == Delivery.issue_id)
                .join(Magazine, col(Magazine.id) == Issue.magazine_id)
                .where(Delivery.id == delivery_id)
            ).first()
        if row is None:
            raise BadToken(N_("This link is not valid."))
        delivery, slug = row
        subscriber = (
            session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id else None
        )
        if subscriber is None:
            raise BadToken(N_("This link is no longer valid."))
        if utcnow() - (delivery.sent_at or delivery.next_attempt_at) > self.links.max_age(max_age):
            raise BadToken(N_("This link has expired."))
        return subscriber, slug

    def mail_preferences_link(self, session: Session, subscriber: Subscriber) -> bool:
        """Queue a fresh preferences link to the person's own address, in the session's
        transaction; False (nothing queued) when ``PREFERENCES_LINK_MAILS`` went to them in
        the last day already. The count is the outbox's own rows (kept a week after
        sending), so it holds across processes and restarts."""
        since = utcnow() - timedelta(days=1)
        sent = session.exec(
            select(func.count())
            .select_from(SystemMail)
            .where(SystemMail.recipient == subscriber.email)
            .where(SystemMail.kind == "preferences_link")
            .where(col(SystemMail.created_at) >= since)
        ).one()
        if sent >= PREFERENCES_LINK_MAILS:
            return False
        locale = subscriber.locale
        self.mailer.queue(
            session,
            "preferences_link",
            recipient=subscriber.email,
            locale=locale,
            subject=N_("Your link to your preferences"),
            address=subscriber.email,
            preferences_url=self.links.url(Action.preferences, subscriber, lang=locale),
            days=self.links.max_age(Action.preferences).days,
        )
        return True

    def unsubscribe_link(self, token: str) -> UnsubscribeLink:
        """What an unsubscribe link's token says, checked without the database (its
        signature, seal and age): a delivery, or a person's link key and scope. ``BadToken``
        for a token that is not good."""
        if len(token) == TOKEN_LENGTH:
            delivery_id = self.deliveries.read(token)
            if delivery_id is None:
                raise BadToken(N_("This link is not valid."))
            return UnsubscribeLink(delivery_id=delivery_id)
        key, scope = self.links.read(Action.unsubscribe, token)
        return UnsubscribeLink(key=key, scope=scope)

    def unsubscribe(
        self, conn: Connection, link: UnsubscribeLink, evidence: Evidence
    ) -> Unsubscribing:
        """End, in ``conn``'s transaction, whatever of the link's person it covers that is
        still live, each with its withdrawal in the ledger; a repeat finds nothing live.
        ``BadToken`` for a link whose person is gone."""
        return one(self.unsubscribe_all, conn, (link, evidence))

    def unsubscribe_all(
        self, conn: Connection, requests: Sequence[tuple[UnsubscribeLink, Evidence]]
    ) -> list[Unsubscribing | BadToken]:
        """``unsubscribe`` for many links at once, in a few statements whatever their number
        (the one-clicks of a group commit): one outcome per request, in order, a
        ``BadToken`` (having written nothing) for a link whose person is gone."""
        found = self.unsubscribing(conn, [link for link, _ in requests])
        endings = [
            Change(named.person, named.magazines, evidence)
            for named, (_, evidence) in zip(found, requests, strict=True)
            if not isinstance(named, BadToken)
        ]
        self.lifecycle.end_all(conn, endings)
        return found

    @staticmethod
    def unsubscribing(
        conn: Connection, links: Sequence[UnsubscribeLink]
    ) -> list[Unsubscribing | BadToken]:
        """Whom each unsubscribe link names and the magazines it covers (its issue's, the one
        its scope names, or all with an empty scope), read on ``conn`` without the ORM: one
        query for the links with a key (with every magazine), one for delivery links.
        ``BadToken`` for a link whose person is gone."""
        keys = sorted({link.key for link in links if link.delivery_id is None})
        deliveries = sorted({link.delivery_id for link in links if link.delivery_id is not None})
        people = {}
        magazines: dict[int, str] = {}  # in the order of their ids
        if keys:
            for named in conn.execute(_KEY_SUBJECTS, {"keys": keys}):
                people[named.token_key] = named
                if named.magazine_id is not None:
                    magazines[int(named.magazine_id)] = str(named.slug)
        sent = {}
        if deliveries:
            sent = {
                row.delivery_id: row
                for row in conn.execute(_DELIVERY_SUBJECTS, {"deliveries": deliveries})
            }
        outcomes: list[Unsubscribing | BadToken] = []
        for link in links:
            row: Any
            if link.delivery_id is not None:
                row = sent.get(link.delivery_id)
                if row is None:
                    outcomes.append(BadToken(N_("This link is not valid.")))
                    continue
                covers = {int(row.magazine_id): str(row.slug)}
            else:
                row = people.get(link.key)
                covers = {
                    id_: slug
                    for id_, slug in magazines.items()
                    if not link.scope or slug == link.scope
                }
            if row is None or row.id is None:
                outcomes.append(BadToken(N_("This link is no longer valid.")))
                continue
            person = Person(row.id, row.email, row.address_digest)
            outcomes.append(Unsubscribing(person, row.token_key, covers))
        return outcomes

    def pending_titles(self, session: Session, subscriber: Subscriber, locale: str) -> list[str]:
        rows = session.exec(
            select(Magazine)
            .join(Subscription, col(Subscription.magazine_id) == Magazine.id)
            .where(Subscription.subscriber_id == subscriber.id)
            .where(Subscription.status == SubscriptionStatus.pending)
        ).all()
        return [localised(m.title, locale) for m in rows]

    def confirm(self, session: Session, token: str, client: Client) -> Subscriber:
        subscriber, _scope = self.subscriber_for(session, Action.confirm, token)
        evidence = Evidence(ConsentChannel.link, client.ip, client.user_agent)
        self.lifecycle.confirm(session, subscriber, evidence)
        # Confirming through the mailbox is a fresh opt-in: it lifts an earlier suppression.
        session.execute(
            delete(Suppression).where(
                col(Suppression.address_digest) == self.hasher.digest(subscriber.email)
            )
        )
        session.commit()
        return subscriber

    # --- expiry --------------------------------------------------------------------------------

    def purge_expired(self, session: Session) -> int:
        """Remove sign-ups never confirmed in time; delete people left with nothing."""
        cutoff = utcnow() - self.policy.pending
        expired = session.exec(
            select(Subscription)
            .where(Subscription.status == SubscriptionStatus.pending)
            .where(col(Subscription.created_at) < cutoff)
        ).all()
        touched: dict[int, Subscriber] = {}
        evidence = Evidence(ConsentChannel.expiry)
        for subscription in expired:
            subscriber = session.get(Subscriber, subscription.subscriber_id)
            magazine = session.get(Magazine, subscription.magazine_id)
            if subscriber is None or magazine is None:
                continue
            self.lifecycle.end(session, subscriber, [magazine], evidence)
            session.delete(subscription)
            touched[subscriber.id or 0] = subscriber
        for subscriber in touched.values():
            self.lifecycle.withdraw_unconfirmed(session, subscriber, evidence)
            session.flush()
            remaining = session.exec(
                select(Subscription.id).where(Subscription.subscriber_id == subscriber.id)
            ).first()
            if remaining is None:
                consent.erase_personal_fields(session, subscriber_id=subscriber.id or 0)
                session.delete(subscriber)
        session.commit()
        return len(expired)
