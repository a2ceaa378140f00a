"""rate limit counts: per-IP and per-address limits shared by every web process

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 12:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_count",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("subject_digest", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject_digest", "bucket"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Counts need no crash safety (a crash forgets them: at worst a limit starts afresh),
        # and a commit that wrote only an unlogged table waits for no WAL flush: a check
        # costs one round trip, not a disk write.
        op.execute("ALTER TABLE rate_limit_count SET UNLOGGED")


def downgrade() -> None:
    op.drop_table("rate_limit_count")
