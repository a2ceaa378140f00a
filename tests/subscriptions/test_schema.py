"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from subscriptions import schema


def test_models_and_migrations_do_not_drift(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, schema.target_metadata)
    assert differences == []


def test_store_is_at_the_latest_revision(engine: Engine) -> None:
    state = schema.revision_state(engine)
    assert state.at_head
    assert state.current is not None


def test_upgrade_is_idempotent(engine: Engine) -> None:
    schema.upgrade(engine)
    assert schema.revision_state(engine).at_head
