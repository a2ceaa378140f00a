"""delivery enhanced status, and replies without addresses or tokens

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 13:10:00.000000

``delivery.last_reply`` kept the relay's raw text ("550 5.1.1 <bob@example.org>: ..."),
which the issue report grouped by and showed to marketers, and which outlived an erasure.
Rows are now stored with the addresses and tokens removed (``mailer.redact``) and with the
RFC 3463 status in ``last_enhanced_status``; this revision does the same to the rows already
there, at rest (scrubbing on read would leave the addresses in the store and its backups).
The patterns are copied here as they were at this revision, so the migration keeps its
meaning whatever the code becomes. Only rows that can hold something are read: a failure
or deferral (for its status), or a reply with an ``@`` or a ``/`` in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MAILBOX = r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+"
_ADDRESS = re.compile(rf"<{_MAILBOX}>|{_MAILBOX}", re.UNICODE)
_LINK_TOKEN = re.compile(
    r"(/(?:u|preferences|confirm|erase|verify|disclosure|processor/v1/[\w-]+)/)[^/\s?#\"'<>]+"
)
_DELIVERY_TOKEN = re.compile(r"(?<![A-Za-z0-9])[a-z2-7]{26}(?![A-Za-z0-9])", re.IGNORECASE)
_STATUS = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
_BATCH = 1000


def _scrubbed(text: str) -> str:
    text = _LINK_TOKEN.sub(r"\1<token>", _ADDRESS.sub("<address>", text))
    return _DELIVERY_TOKEN.sub("<token>", text)[:500]


def _status(text: str) -> str | None:
    found = _STATUS.search(text)
    return None if found is None else ".".join(str(int(part)) for part in found.groups())


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_enhanced_status", sa.String(length=16), nullable=True))
    conn = op.get_bind()
    delivery = sa.table(
        "delivery",
        sa.column("id", sa.Integer),
        sa.column("status", sa.String),
        sa.column("last_reply", sa.String),
        sa.column("last_enhanced_status", sa.String),
    )
    candidates = (
        sa.select(delivery.c.id, delivery.c.status, delivery.c.last_reply)
        .where(delivery.c.last_reply.is_not(None))
        .where(
            delivery.c.status.in_(["failed", "deferred"])
            | delivery.c.last_reply.contains("@")
            | delivery.c.last_reply.contains("/")
        )
        .order_by(delivery.c.id)
        .limit(_BATCH)
    )
    change = (
        sa.update(delivery)
        .where(delivery.c.id == sa.bindparam("b_id"))
        .values(last_reply=sa.bindparam("b_reply"), last_enhanced_status=sa.bindparam("b_status"))
    )
    after = 0
    while True:
        rows = conn.execute(candidates.where(delivery.c.id > after)).all()
        if not rows:
            break
        conn.execute(
            change,
            [
                {
                    "b_id": row.id,
                    "b_reply": _scrubbed(row.last_reply),
                    "b_status": _status(row.last_reply) if row.status != "sent" else None,
                }
                for row in rows
            ],
        )
        after = rows[-1].id


def downgrade() -> None:
    # The removed addresses are gone for good; only the column goes.
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("last_enhanced_status")
