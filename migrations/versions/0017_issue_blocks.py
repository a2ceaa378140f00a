"""issue blocks: refusals for policy or content (RFC 3463 5.7.x), counted for the brake

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 12:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Earlier blocks were counted as hard bounces (and suppressed their readers): they cannot
    # be told apart now, so every existing issue starts at 0.
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("blocks", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.drop_column("blocks")
