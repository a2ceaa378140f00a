"""The opt-in store's tables: subscribers, magazines, subscriptions, notices, consent, suppression.

Each entity follows the SQLModel family: ``XBase`` (shared fields), ``XCreate`` (what a caller
may supply), ``XPublic`` (what an API may show) and the table model. Statuses are ``Enum``s
stored by value; each status is changed in exactly one module (subscriptions in
``subscriptions.subscribing`` and friends, as the capabilities arrive), never ad hoc.

Personal data lives only here, in ``subscriber`` (the address and profile fields) and in the
IP and user agent of ``consent_event``. Everything else refers to a person by id, or, after
erasure, by a keyed hash of the address.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel

from mailer.clock import utcnow
from mailer.columns import EnumText, UTCDateTime
from subscriptions.tokens import new_token_key

# --- Subscriber -------------------------------------------------------------------------------


class SubscriberBase(SQLModel):
    email: str = Field(
        max_length=320,
        description="Normalised address (domain lower-cased), spelled as the person first gave "
        "it: mail goes to this spelling.",
    )
    name: str | None = Field(default=None, max_length=200)
    company: str | None = Field(default=None, max_length=200)
    department: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    locale: str = Field(default="en", max_length=8)


class Subscriber(SubscriberBase, table=True):
    __tablename__ = "subscriber"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    address_digest: str = Field(
        max_length=64,
        index=True,
        unique=True,
        description="Keyed hash of the address lower-cased: the mailbox, whatever the case of "
        "its spelling (one subscriber per mailbox; sign-up, import and suppression match on it).",
    )
    token_key: str = Field(
        default_factory=new_token_key,
        max_length=32,
        unique=True,
        description="Random; the subject of every signed link, never shown in clear.",
    )
    bounce_score: float = Field(
        default=0.0,
        sa_column_kwargs={"server_default": "0"},
        description="Soft bounces, halving every week; suppressed past a threshold.",
    )
    bounce_scored_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    notified_at: datetime | None = Field(
        default=None, sa_type=UTCDateTime, description="Last confirmation-type system mail."
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SubscriberPublic(SubscriberBase):
    id: int


# --- Magazine ---------------------------------------------------------------------------------


class MagazineBase(SQLModel):
    slug: str = Field(max_length=64, regex=r"^[a-z0-9][a-z0-9-]*$")
    title: dict[str, str] = Field(sa_type=JSON, description="Title per locale (en, ja).")
    description: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    purpose: str = Field(
        default="newsletter", max_length=64, description="Key of the purpose of use it serves."
    )
    active: bool = True


class Magazine(MagazineBase, table=True):
    __tablename__ = "magazine"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class MagazineCreate(MagazineBase):
    pass


class MagazinePublic(MagazineBase):
    id: int


def localised(texts: dict[str, str], locale: str) -> str:
    """The text for ``locale``, falling back to English, then to any text there is."""
    return texts.get(locale) or texts.get("en") or next(iter(texts.values()), "")


# --- Subscription -----------------------------------------------------------------------------


class SubscriptionStatus(StrEnum):
    pending = "pending"  # asked, double opt-in not yet confirmed
    confirmed = "confirmed"
    unsubscribed = "unsubscribed"
    suppressed = "suppressed"  # bounced or complained: not to be mailed without a new opt-in


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "magazine_id"),
        # A magazine's audience in subscriber order: counts by state use its prefix, and an
        # issue's expansion seeks its chunk boundaries in it.
        Index("ix_subscription_audience", "magazine_id", "status", "subscriber_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), nullable=False)
    )
    magazine_id: int = Field(
        sa_column=Column(Integer, ForeignKey("magazine.id", ondelete="RESTRICT"), nullable=False)
    )
    status: SubscriptionStatus = Field(sa_type=EnumText(SubscriptionStatus))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    confirmed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- Notice versions --------------------------------------------------------------------------


class NoticeVersion(SQLModel, table=True):
    """The exact notice text shown at collection. Immutable: a new text is a new row."""

    __tablename__ = "notice_version"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, description="SHA-256 of body, hex.")
    locale: str = Field(max_length=8)
    body: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- Consent ledger ---------------------------------------------------------------------------


class ConsentPurpose(StrEnum):
    magazine = "magazine"  # receive one magazine (scope: its slug)
    joint_use = "joint_use"  # joint use with the group companies in the notice
    foreign_transfer = "foreign_transfer"  # transfer to joint users abroad (scope: country)


class ConsentAction(StrEnum):
    granted = "granted"  # the person asked (double opt-in pending)
    confirmed = "confirmed"  # the person confirmed through the mailed link
    withdrawn = "withdrawn"


class ConsentChannel(StrEnum):
    web_form = "web_form"
    api = "api"
    import_ = "import"
    staff = "staff"  # entered by staff after a phone call or letter
    link = "link"  # a signed link from a mail
    one_click = "one_click"  # RFC 8058 List-Unsubscribe-Post
    mailto = "mailto"  # a mail to the List-Unsubscribe address
    complaint = "complaint"
    erasure = "erasure"
    expiry = "expiry"  # a sign-up never confirmed, withdrawn when its data is purged
    bounce = "bounce"  # the address bounced: mail to it stops, not a choice of the person


class ConsentEvent(SQLModel, table=True):
    """One row of the append-only, hash-chained consent ledger.

    ``row_hash`` covers the row's content and ``prev_hash``; the personal fields (IP, user
    agent) enter it through ``personal_digest`` so that erasure can blank them and the chain
    still verifies.
    """

    __tablename__ = "consent_event"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True, description="Position in the chain, from 1, no gaps.")
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL"), index=True),
    )
    subject_digest: str = Field(max_length=64, index=True, description="Keyed hash of address.")
    purpose: ConsentPurpose = Field(sa_type=EnumText(ConsentPurpose))
    scope: str = Field(default="", max_length=64)
    action: ConsentAction = Field(sa_type=EnumText(ConsentAction))
    channel: ConsentChannel = Field(sa_type=EnumText(ConsentChannel))
    notice_hash: str | None = Field(default=None, max_length=64)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=512)
    personal_digest: str = Field(max_length=64)
    personal_erased: bool = False
    import_batch_id: int | None = Field(
        default=None, description="The import this event came from (hashed when set)."
    )
    purged: bool = Field(
        default=False,
        description="Past its retention: content blanked, only its place in the chain kept.",
        sa_column_kwargs={"server_default": false()},
    )
    prev_hash: str = Field(max_length=64)
    row_hash: str = Field(max_length=64, unique=True)


class LedgerHead(SQLModel, table=True):
    """The tip of a hash chain: its length and last hash. Locked to append, so appends are
    serialised, and compared by verify, so a removed tail is noticed too."""

    __tablename__ = "ledger_head"

    name: str = Field(primary_key=True, max_length=32)
    seq: int = 0
    last_hash: str = Field(max_length=64)


# --- Suppression ------------------------------------------------------------------------------


class SuppressionReason(StrEnum):
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"  # score passed the threshold
    complaint = "complaint"
    manual = "manual"  # staff, after a phone call or letter
    erasure = "erasure"


class Suppression(SQLModel, table=True):
    """An address never to be mailed again without a fresh opt-in, kept as a keyed hash."""

    __tablename__ = "suppression"

    id: int | None = Field(default=None, primary_key=True)
    address_digest: str = Field(max_length=64, unique=True)
    reason: SuppressionReason = Field(sa_type=EnumText(SuppressionReason))
    note: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- Staff ------------------------------------------------------------------------------------


class StaffRole(StrEnum):
    admin = "admin"  # accounts, settings, registries
    marketer = "marketer"  # magazines, issues, schedules, aggregate statistics
    privacy_officer = "privacy_officer"  # registries, notices, consent evidence, requests
    viewer = "viewer"  # read-only aggregates


class StaffUserBase(SQLModel):
    email: str = Field(max_length=320)
    display_name: str = Field(default="", max_length=200)
    role: StaffRole = Field(sa_type=EnumText(StaffRole))


class StaffUser(StaffUserBase, table=True):
    __tablename__ = "staff_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    password_hash: str = Field(max_length=200)
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    password_changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    totp_secret: str | None = Field(
        default=None, max_length=300, description="The TOTP seed, encrypted with the app secret."
    )
    totp_last_step: int | None = Field(default=None, description="No code is accepted twice.")


class StaffSession(SQLModel, table=True):
    """A browser login. The cookie holds a random token; only its SHA-256 is stored.

    ``second_factor`` is false between the password and the TOTP code (or, for an admin
    without TOTP, until it is enrolled): such a session reaches only the TOTP pages."""

    __tablename__ = "staff_session"

    id: int | None = Field(default=None, primary_key=True)
    staff_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("staff_user.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    token_hash: str = Field(max_length=64, unique=True)
    csrf_token: str = Field(max_length=64)
    second_factor: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    source: str = Field(default="", max_length=100)
    user_agent: str = Field(default="", max_length=300)


class StaffToken(SQLModel, table=True):
    """A personal API token of a staff member; only its SHA-256 is stored."""

    __tablename__ = "staff_token"

    id: int | None = Field(default=None, primary_key=True)
    staff_id: int = Field(
        sa_column=Column(Integer, ForeignKey("staff_user.id", ondelete="CASCADE"), nullable=False)
    )
    token_hash: str = Field(max_length=64, unique=True)
    label: str = Field(default="", max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class StaffUserCreate(StaffUserBase):
    password: str = Field(min_length=12, max_length=1024)


class StaffUserPublic(StaffUserBase):
    id: int
    active: bool


# --- System mail outbox -----------------------------------------------------------------------


class SystemMailStatus(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"


class SystemMail(SQLModel, table=True):
    """A transactional mail (confirmation, erasure check...) stored before anyone is told it
    will be sent, then delivered by the outbox sender. Purged a while after sending."""

    __tablename__ = "system_mail"
    __table_args__ = (Index("ix_system_mail_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    recipient: str = Field(max_length=320)
    kind: str = Field(max_length=32)
    message: bytes = Field(sa_type=LargeBinary)
    status: SystemMailStatus = Field(
        default=SystemMailStatus.queued, sa_type=EnumText(SystemMailStatus)
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- Single-use form tokens -------------------------------------------------------------------


class FormNonce(SQLModel, table=True):
    """A sign-up form token that has been used once and may not be used again."""

    __tablename__ = "form_nonce"

    nonce: str = Field(primary_key=True, max_length=32)
    used_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- Inbound mail -----------------------------------------------------------------------------


class InboundStatus(StrEnum):
    received = "received"  # stored, not yet acted on
    processed = "processed"
    ignored = "ignored"


class InboundMessage(SQLModel, table=True):
    """A message received by ``mailmag inbound`` (bounce, complaint, unsubscribe mail),
    stored before the 250 reply. It holds personal data: purged after the retention period."""

    __tablename__ = "inbound_message"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    mail_from: str = Field(max_length=320)
    recipient: str = Field(max_length=320)
    raw: bytes = Field(sa_type=LargeBinary)
    status: InboundStatus = Field(default=InboundStatus.received, sa_type=EnumText(InboundStatus))
    kind: str | None = Field(default=None, max_length=24)
    delivery_id: int | None = None
    outcome: str | None = Field(default=None, max_length=500)


class WebhookEvent(SQLModel, table=True):
    """A provider's bounce or complaint event, kept by its id so a replay acts only once."""

    __tablename__ = "webhook_event"

    event_id: str = Field(primary_key=True, max_length=100)
    kind: str = Field(max_length=24)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    outcome: str = Field(default="", max_length=500)


# --- Transfer records -------------------------------------------------------------------------


class TransferRecord(SQLModel, table=True):
    """A hand-off of personal data to another party: to whom, which fields, how many people,
    why, on what legal basis, when. The people are the issue's deliveries (per subscriber)."""

    __tablename__ = "transfer_record"

    id: int | None = Field(default=None, primary_key=True)
    party: str = Field(max_length=64, index=True)
    party_kind: str = Field(max_length=24, description="processor, joint_user, third_party")
    issue_id: int | None = Field(default=None, index=True)
    fields: str = Field(max_length=200)
    people: int
    purpose: str = Field(max_length=64)
    legal_basis: str = Field(max_length=200)
    triggered_by: str = Field(default="mailmag", max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class TransferSubject(SQLModel, table=True):
    """One person in a transfer without deliveries (a joint-use export): so a disclosure
    request can say who received this person's data. Kept by keyed hash after erasure."""

    __tablename__ = "transfer_subject"

    id: int | None = Field(default=None, primary_key=True)
    transfer_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("transfer_record.id", ondelete="CASCADE"), nullable=False
        )
    )
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL"), index=True),
    )
    subject_digest: str = Field(max_length=64, index=True)


class PartyNotice(SQLModel, table=True):
    """An opt-out to pass on to a party that holds the person's data (a processor that sent
    them mail, a joint user that received an export). Written in the same transaction as the
    withdrawal; handed over with ``mailmag parties export``; deleted once handed over."""

    __tablename__ = "party_notice"

    id: int | None = Field(default=None, primary_key=True)
    party: str = Field(max_length=64, index=True)
    party_kind: str = Field(max_length=24)
    subject_digest: str = Field(max_length=64)
    address: str = Field(max_length=320, description="So the party can find the person.")
    change: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PartyCredential(SQLModel, table=True):
    """A machine credential of a processor or joint user for the ``/processor/v1`` API.

    Only its SHA-256 is stored; it expires, and revoking it takes effect on the next request.
    It reaches only that party's own batches, outcomes and opt-out notices."""

    __tablename__ = "party_credential"

    id: int | None = Field(default=None, primary_key=True)
    party: str = Field(max_length=64, index=True)
    party_kind: str = Field(max_length=24)
    token_hash: str = Field(max_length=64, unique=True)
    label: str = Field(default="", max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- Audit log ----------------------------------------------------------------------------------


class AuditEvent(SQLModel, table=True):
    """One row of the append-only, hash-chained audit log: who did what to whose data, when,
    from where. The people concerned are in ``audit_subject`` (their digests enter the row
    hash through ``subjects_digest``)."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    actor: str = Field(max_length=200, description="staff:<id> <email>, cli:<user>, system")
    action: str = Field(max_length=64, index=True)
    target: str = Field(default="", max_length=200)
    detail: str = Field(default="", sa_type=Text)
    source: str = Field(default="", max_length=100, description="IP address or terminal.")
    subjects: int = 0
    subjects_digest: str = Field(max_length=64)
    prev_hash: str = Field(max_length=64)
    row_hash: str = Field(max_length=64, unique=True)


class AuditSubject(SQLModel, table=True):
    __tablename__ = "audit_subject"

    id: int | None = Field(default=None, primary_key=True)
    audit_id: int = Field(
        sa_column=Column(Integer, ForeignKey("audit_event.id", ondelete="CASCADE"), nullable=False)
    )
    subject_digest: str = Field(max_length=64, index=True)


# --- Retention ----------------------------------------------------------------------------------


class LegalHold(SQLModel, table=True):
    """Keeps everything about one address from every retention purge until released."""

    __tablename__ = "legal_hold"

    id: int | None = Field(default=None, primary_key=True)
    subject_digest: str = Field(max_length=64, index=True)
    reason: str = Field(max_length=500)
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RetentionRun(SQLModel, table=True):
    """One run of the retention jobs and what each deleted."""

    __tablename__ = "retention_run"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime = Field(sa_type=UTCDateTime)
    deleted: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    held: int = Field(default=0, description="Rows due but kept under a legal hold.")


# --- Imports ------------------------------------------------------------------------------------


class ImportBatch(SQLModel, table=True):
    """One CSV import: the file's hash (a second import of it changes nothing), the legal
    basis under which its rows came in, and what became of them."""

    __tablename__ = "import_batch"

    id: int | None = Field(default=None, primary_key=True)
    file_sha256: str = Field(max_length=64, unique=True)
    file_name: str = Field(max_length=300)
    magazine: str = Field(max_length=64)
    legal_basis: str = Field(default="", max_length=300)
    triggered_by: str = Field(max_length=200)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    counts: dict[str, int] = Field(default_factory=dict, sa_type=JSON)


# --- Incidents ----------------------------------------------------------------------------------


class IncidentKind(StrEnum):
    leak = "leak"  # 漏えい
    loss = "loss"  # 滅失
    damage = "damage"  # 毀損
    suspected = "suspected"  # a possibility (おそれ) under investigation


class Incident(SQLModel, table=True):
    """A personal-data incident in the privacy officer's register (APPI Art. 26)."""

    __tablename__ = "incident"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=300)
    description: str = Field(default="", sa_type=Text)
    kind: IncidentKind = Field(sa_type=EnumText(IncidentKind))
    discovered_at: datetime = Field(sa_type=UTCDateTime)
    sensitive_data: bool = False  # 要配慮個人情報
    financial_harm: bool = False  # data whose misuse may cause financial damage
    unauthorised_access: bool = False  # a wrongful purpose: attack, theft, insider
    recorded_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reported_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    people_notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class IncidentSubject(SQLModel, table=True):
    __tablename__ = "incident_subject"
    __table_args__ = (UniqueConstraint("incident_id", "subject_digest"),)

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(
        sa_column=Column(Integer, ForeignKey("incident.id", ondelete="CASCADE"), nullable=False)
    )
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL")),
    )
    subject_digest: str = Field(max_length=64)


# --- Privacy requests ---------------------------------------------------------------------------


class RequestKind(StrEnum):
    disclosure = "disclosure"  # 開示
    correction = "correction"  # 訂正
    cessation = "cessation"  # 利用停止: stop using the data (all mail ends)
    erasure = "erasure"  # 消去
    stop_provision = "stop_provision"  # 第三者提供の停止: no more joint use
    complaint = "complaint"  # 苦情
    consultation = "consultation"  # 相談


class RequestStatus(StrEnum):
    awaiting_verification = "awaiting_verification"  # the mail loop is not closed yet
    open = "open"
    completed = "completed"
    rejected = "rejected"


class RequestChannel(StrEnum):
    preferences = "preferences"  # from the person's preferences page (already verified)
    contact_form = "contact_form"
    phone = "phone"
    letter = "letter"
    email = "email"


class PrivacyRequest(SQLModel, table=True):
    """A request, complaint or consultation at the contact point, with its due date and
    outcome. ``address`` is the address concerned; identity is proven by a mail loop to it."""

    __tablename__ = "privacy_request"

    id: int | None = Field(default=None, primary_key=True)
    kind: RequestKind = Field(sa_type=EnumText(RequestKind))
    status: RequestStatus = Field(sa_type=EnumText(RequestStatus), index=True)
    channel: RequestChannel = Field(sa_type=EnumText(RequestChannel))
    address: str = Field(max_length=320)
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL")),
    )
    subject_digest: str = Field(max_length=64, index=True)
    message: str = Field(default="", sa_type=Text)
    correction: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    due_at: datetime = Field(sa_type=UTCDateTime)
    reminded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str = Field(default="", sa_type=Text)
    entered_by: str = Field(default="", max_length=200)
    handled_by: str = Field(default="", max_length=200)


# --- Operations -----------------------------------------------------------------------------


class StoreProbe(SQLModel, table=True):
    """One row that ``/readyz`` writes, to prove the store still takes writes."""

    __tablename__ = "store_probe"

    id: int = Field(primary_key=True)
    written_at: datetime = Field(sa_type=UTCDateTime)
