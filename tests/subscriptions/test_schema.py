"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import Engine

from mailer.sending import start_issue
from subscriptions import schema
from subscriptions.runtime import Runtime
from tests.mailer.test_sending import seed


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


def test_replies_stored_before_0018_lose_their_addresses_and_gain_their_status(
    app: FastAPI, engine: Engine
) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 3)
    start_issue(engine, runtime.audience, runtime.preparer, issue_id)
    token = runtime.delivery_tokens.make(1)
    replies = [
        ("failed", f"5.1.1 <{people[0].email}>: Recipient address rejected"),
        ("sent", f"2.0.0 <{token}.0badcafe@example.com> queued as 4Kx9"),
        ("deferred", f"4.2.2 mailbox of {people[2].email} over quota"),
    ]
    cfg = schema.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0017")
        ids = conn.execute(
            text("SELECT id FROM delivery WHERE issue_id = :i ORDER BY id"), {"i": issue_id}
        ).scalars()
        for delivery_id, (state, reply) in zip(ids, replies, strict=True):
            conn.execute(
                text("UPDATE delivery SET status = :s, last_reply = :r WHERE id = :d"),
                {"s": state, "r": reply, "d": delivery_id},
            )
    schema.upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT last_reply, last_enhanced_status FROM delivery"
                " WHERE issue_id = :i ORDER BY id"
            ),
            {"i": issue_id},
        ).all()
    assert [tuple(row) for row in rows] == [
        ("5.1.1 <address>: Recipient address rejected", "5.1.1"),
        ("2.0.0 <address> queued as 4Kx9", None),
        ("4.2.2 mailbox of <address> over quota", "4.2.2"),
    ]
    assert schema.revision_state(engine).at_head
