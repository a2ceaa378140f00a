"""Many confirmed subscribers at once, as bulk rows (a fixture for scale tests, not the
import path under test)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.clock import utcnow
from subscriptions.addresses import AddressHasher
from subscriptions.db import refresh_statistics, table_of
from subscriptions.models import Magazine, Subscriber, Subscription
from subscriptions.tokens import new_token_key

CHUNK = 10_000


def confirmed_readers(engine: Engine, hasher: AddressHasher, slug: str, count: int) -> int:
    """``count`` confirmed subscribers of the magazine ``slug`` (addresses
    ``reader0000000@example<n % 50>.org``); returns the magazine's id."""
    now = utcnow()
    subscribers, subscriptions = table_of(Subscriber), table_of(Subscription)
    with Session(engine) as session:
        magazine_id = session.exec(select(Magazine.id).where(Magazine.slug == slug)).one()
        assert magazine_id is not None
        for start in range(0, count, CHUNK):
            rows = []
            for n in range(start, min(count, start + CHUNK)):
                address = f"reader{n:07d}@example{n % 50}.org"
                rows.append(
                    {
                        "email": address,
                        "address_digest": hasher.digest(address),
                        "token_key": new_token_key(),
                        "name": f"Reader {n}",
                        "locale": "en",
                        "bounce_score": 0.0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            ids = session.connection().execute(
                subscribers.insert().returning(subscribers.c.id), rows
            )
            session.connection().execute(
                subscriptions.insert(),
                [
                    {
                        "subscriber_id": i,
                        "magazine_id": magazine_id,
                        "status": "confirmed",
                        "created_at": now,
                        "confirmed_at": now,
                    }
                    for (i,) in ids
                ],
            )
            session.commit()
    refresh_statistics(engine, "subscriber", "subscription")
    return magazine_id
