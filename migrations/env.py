"""Alembic environment: runs mailmag's migrations against the configured database.

The URL comes, in order, from a connection handed in by ``subscriptions.schema`` (tests and
``mailmag migrate``), from ``-x url=...`` on the alembic command line, or from mailmag's
settings. mailmag's own column types are rendered as the plain SQL types they store.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import URL, Connection

from subscriptions.schema import target_metadata

config = context.config


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    from mailer.columns import EnumText, UTCDateTime

    if type_ == "type" and isinstance(obj, EnumText):
        return f"sa.String(length={getattr(obj.impl, 'length', None)})"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    if type_ == "type" and obj.__class__.__module__.startswith("sqlmodel"):
        return f"sa.String(length={getattr(obj, 'length', None)})"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=render_item,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url: str | URL | None = context.get_x_argument(as_dictionary=True).get("url")
    if url is None:
        from subscriptions.settings import load_settings

        url = load_settings().sqlalchemy_url
    from subscriptions.db import make_engine

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("mailmag's migrations run online only: give them a database")
run_migrations()
