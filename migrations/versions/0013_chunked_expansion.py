"""chunked expansion: the issue's expansion cursor and an audience index in subscriber order

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 04:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Issues started before this revision were expanded whole before they were marked
    # sending, so NULL (nothing left to queue) is right for every existing row.
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expansion_cursor", sa.Integer(), nullable=True))
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_magazine_status")
        batch_op.create_index(
            "ix_subscription_audience", ["magazine_id", "status", "subscriber_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_audience")
        batch_op.create_index(
            "ix_subscription_magazine_status", ["magazine_id", "status"], unique=False
        )
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.drop_column("expansion_cursor")
