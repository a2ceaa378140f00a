"""one subscriber per mailbox: merge people whose addresses differ only in case, and make the
address digest unique

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 12:40:00.000000

Until now ``ALICE@example.com`` and ``alice@example.com`` became two subscribers (the address
was unique only as spelled), each mailed every issue. The address digest is the HMAC of the
address lower-cased, so it already names the mailbox whatever the case; it becomes the unique
key that sign-up and import match on. People sharing a digest are merged first, into the one
known first (the lowest id, whose spelling is kept for sending):

- their consent events, privacy requests, transfer and incident subjects, and deliveries
  follow the person (a delivery of an issue that both spellings received stays with the
  first, and the second's loses its person, as after an erasure: its links no longer work);
- per magazine the subscription that says more is kept: a confirmed, unsubscribed or
  suppressed one over a pending request, else the one changed last;
- empty profile fields are filled from the other spelling; the latest notification time and
  the higher bounce score are kept. The second spelling's own links (confirmation,
  preferences) stop working; the links in issues keep working, through their delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROFILE = ("name", "company", "department", "title", "phone")
subscriber = sa.table(
    "subscriber",
    sa.column("id", sa.Integer()),
    sa.column("address_digest", sa.String()),
    sa.column("notified_at", sa.DateTime()),
    sa.column("bounce_score", sa.Float()),
    *(sa.column(name, sa.String()) for name in PROFILE),
)
subscription = sa.table(
    "subscription",
    sa.column("id", sa.Integer()),
    sa.column("subscriber_id", sa.Integer()),
    sa.column("magazine_id", sa.Integer()),
    sa.column("status", sa.String()),
    sa.column("created_at", sa.DateTime()),
    sa.column("confirmed_at", sa.DateTime()),
    sa.column("ended_at", sa.DateTime()),
)
delivery = sa.table(
    "delivery",
    sa.column("id", sa.Integer()),
    sa.column("issue_id", sa.Integer()),
    sa.column("subscriber_id", sa.Integer()),
)
# Subscriptions and deliveries hold a unique key with the person; every other row that
# refers to a person (consent events, privacy requests, transfer and incident subjects...)
# simply follows them.
WITH_A_KEY = ("subscription", "delivery")


def upgrade() -> None:
    conn = op.get_bind()
    shared = (
        sa.select(subscriber.c.address_digest)
        .group_by(subscriber.c.address_digest)
        .having(sa.func.count() > 1)
    )
    followers = [
        (table, column)
        for table in sa.inspect(conn).get_table_names()
        if table not in WITH_A_KEY
        for key in sa.inspect(conn).get_foreign_keys(table)
        if key["referred_table"] == "subscriber"
        for column in key["constrained_columns"]
    ]
    for digest in conn.execute(shared).scalars().all():
        people = conn.execute(
            sa.select(subscriber)
            .where(subscriber.c.address_digest == digest)
            .order_by(subscriber.c.id)
        ).all()
        first = people[0]
        for other in people[1:]:
            _merge(conn, followers, first, other)
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_address_digest"))
        batch_op.create_index(
            batch_op.f("ix_subscriber_address_digest"), ["address_digest"], unique=True
        )


def _merge(conn: Connection, followers: list[tuple[str, str]], first: Any, other: Any) -> None:
    keep, gone = first.id, other.id
    for table, column in followers:
        rows = sa.table(table, sa.column(column, sa.Integer()))
        conn.execute(
            rows.update().where(rows.c[column] == gone).values({column: keep}),
        )
    both = sa.select(delivery.c.issue_id).where(delivery.c.subscriber_id == keep)
    conn.execute(
        delivery.update()
        .where(delivery.c.subscriber_id == gone, delivery.c.issue_id.not_in(both))
        .values(subscriber_id=keep)
    )
    conn.execute(
        delivery.update().where(delivery.c.subscriber_id == gone).values(subscriber_id=None)
    )
    kept = {
        row.magazine_id: row
        for row in conn.execute(sa.select(subscription).where(subscription.c.subscriber_id == keep))
    }
    for row in conn.execute(
        sa.select(subscription).where(subscription.c.subscriber_id == gone)
    ).all():
        mine = kept.get(row.magazine_id)
        if mine is not None and _weight(mine) >= _weight(row):
            conn.execute(subscription.delete().where(subscription.c.id == row.id))
            continue
        if mine is not None:
            conn.execute(subscription.delete().where(subscription.c.id == mine.id))
        conn.execute(
            subscription.update().where(subscription.c.id == row.id).values(subscriber_id=keep)
        )
    filled = {name: getattr(other, name) for name in PROFILE if getattr(first, name) is None}
    notified = [t for t in (first.notified_at, other.notified_at) if t is not None]
    conn.execute(
        subscriber.update()
        .where(subscriber.c.id == keep)
        .values(
            **filled,
            notified_at=max(notified) if notified else None,
            bounce_score=max(first.bounce_score or 0.0, other.bounce_score or 0.0),
        )
    )
    conn.execute(subscriber.delete().where(subscriber.c.id == gone))


def _weight(row: Any) -> tuple[bool, datetime]:
    """How much a subscription says: a decision (confirmed, ended) over a mere request,
    then the latest change."""
    changed = max(t for t in (row.created_at, row.confirmed_at, row.ended_at) if t is not None)
    return row.status != "pending", changed


def downgrade() -> None:
    # The people merged stay merged: nothing tells which spelling each row came from.
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_address_digest"))
        batch_op.create_index(
            batch_op.f("ix_subscriber_address_digest"), ["address_digest"], unique=False
        )
