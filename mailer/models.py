"""The sending engine's tables: issues of a magazine and their per-recipient deliveries.

No personal data is stored here. A delivery names its recipient by ``subscriber_id`` only
(an internal key that never leaves the database: messages carry an opaque per-delivery
token instead); the address and merge fields arrive through the ``Audience`` protocol at
send time, already cut down to what the issue needs. The foreign keys name the opt-in
store's tables by name only, so this package still imports nothing from ``subscriptions``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from mailer.clock import utcnow
from mailer.columns import EnumText, UTCDateTime


class IssueStatus(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    sending = "sending"
    paused = "paused"
    sent = "sent"
    cancelled = "cancelled"


class IssueBase(SQLModel):
    subject: str = Field(max_length=300)
    preheader: str = Field(default="", max_length=300)
    html_body: str = Field(sa_type=Text)
    text_body: str | None = Field(default=None, sa_type=Text)
    locale: str = Field(default="en", max_length=8)
    route: str | None = Field(
        default=None,
        max_length=64,
        description="Key of the processor or split route that sends it; none = our own relay.",
    )


class Issue(IssueBase, table=True):
    __tablename__ = "issue"

    id: int | None = Field(default=None, primary_key=True)
    magazine_id: int = Field(
        sa_column=Column(Integer, ForeignKey("magazine.id", ondelete="RESTRICT"), nullable=False)
    )
    status: IssueStatus = Field(default=IssueStatus.draft, sa_type=EnumText(IssueStatus))
    scheduled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    complaints: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    hard_bounces: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    blocks: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # 5.7.x refusals
    pause_reason: str | None = Field(default=None, max_length=300)
    expansion_cursor: int | None = Field(
        default=None,
        description=(
            "While a started issue's audience is still being queued, chunk by chunk in "
            "subscriber order: the highest subscriber id queued so far (0 before the first "
            "chunk). None when there is nothing (more) to queue."
        ),
    )


class DeliveryStatus(StrEnum):
    queued = "queued"
    sending = "sending"  # claimed by a worker under a lease
    sent = "sent"
    deferred = "deferred"  # 4xx or connection failure: retried with backoff
    failed = "failed"  # 5xx
    skipped = "skipped"  # unsubscribed or suppressed before the message left


class Delivery(SQLModel, table=True):
    """One (issue, recipient) pair: the queue entry and its outcome, unique per pair."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id"),
        # Claims seek (issue, state, due time); progress counts use its (issue, state) prefix.
        Index("ix_delivery_claim", "issue_id", "status", "next_attempt_at"),
        Index("ix_delivery_subscriber", "subscriber_id"),  # who holds a person's data, erasure
    )

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(
        sa_column=Column(Integer, ForeignKey("issue.id", ondelete="CASCADE"), nullable=False)
    )
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL")),
    )
    processor: str | None = Field(
        default=None,
        max_length=64,
        description="The processor this recipient was assigned to (by the issue's route).",
    )
    status: DeliveryStatus = Field(default=DeliveryStatus.queued, sa_type=EnumText(DeliveryStatus))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    fence: int = Field(default=0, description="Bumped on each claim; a stale worker's write loses.")
    last_code: int | None = None
    last_enhanced_status: str | None = Field(
        default=None, max_length=16, description="The RFC 3463 status of the last failure."
    )
    last_reply: str | None = Field(
        default=None,
        max_length=500,
        description="The relay's last reply, with addresses and tokens removed (mailer.redact).",
    )
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# APScheduler's SQLAlchemy job store keeps its jobs here. The table is declared (exactly as
# the job store declares it) so that migrations create it and the drift test knows it.
apscheduler_jobs = Table(
    "apscheduler_jobs",
    SQLModel.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
