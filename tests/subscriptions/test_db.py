"""The store's engine and column types behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session, select

from subscriptions.models import (
    Magazine,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_sqlite_is_durable_and_enforces_foreign_keys(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_times_round_trip_as_aware_utc(session: Session) -> None:
    tokyo = timezone(timedelta(hours=9))
    subscriber = Subscriber(
        email="a@example.com",
        address_digest="d" * 64,
        created_at=datetime(2026, 1, 1, 9, tzinfo=tokyo),
    )
    session.add(subscriber)
    session.commit()
    session.expunge_all()
    loaded = session.exec(select(Subscriber)).one()
    assert loaded.created_at == datetime(2026, 1, 1, 0, tzinfo=UTC)
    assert loaded.created_at.tzinfo is UTC


def test_naive_times_are_refused(session: Session) -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 (the point of the test)
    session.add(Subscriber(email="a@example.com", address_digest="d" * 64, created_at=naive))
    with pytest.raises(StatementError, match="naive datetime"):
        session.commit()


def test_statuses_are_stored_as_their_values_and_read_back_as_enums(session: Session) -> None:
    magazine = Magazine(slug="weekly", title={"en": "Weekly"})
    subscriber = Subscriber(email="a@example.com", address_digest="d" * 64)
    session.add_all([magazine, subscriber])
    session.flush()
    assert magazine.id is not None
    assert subscriber.id is not None
    session.add(
        Subscription(
            subscriber_id=subscriber.id,
            magazine_id=magazine.id,
            status=SubscriptionStatus.confirmed,
        )
    )
    session.commit()
    raw = session.connection().execute(text("SELECT status FROM subscription")).scalar()
    assert raw == "confirmed"
    session.expunge_all()
    assert session.exec(select(Subscription)).one().status is SubscriptionStatus.confirmed


def test_one_subscription_per_subscriber_and_magazine(session: Session) -> None:
    magazine = Magazine(slug="weekly", title={"en": "Weekly"})
    subscriber = Subscriber(email="a@example.com", address_digest="d" * 64)
    session.add_all([magazine, subscriber])
    session.flush()
    assert magazine.id is not None
    assert subscriber.id is not None
    for _ in range(2):
        session.add(
            Subscription(
                subscriber_id=subscriber.id,
                magazine_id=magazine.id,
                status=SubscriptionStatus.pending,
            )
        )
    with pytest.raises(IntegrityError):
        session.commit()


def test_deleting_a_subscriber_removes_their_subscriptions(session: Session) -> None:
    magazine = Magazine(slug="weekly", title={"en": "Weekly"})
    subscriber = Subscriber(email="a@example.com", address_digest="d" * 64)
    session.add_all([magazine, subscriber])
    session.flush()
    assert magazine.id is not None
    assert subscriber.id is not None
    session.add(
        Subscription(
            subscriber_id=subscriber.id, magazine_id=magazine.id, status=SubscriptionStatus.pending
        )
    )
    session.commit()
    session.connection().execute(text("DELETE FROM subscriber"))
    session.commit()
    assert session.exec(select(Subscription)).all() == []
