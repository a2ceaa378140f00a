"""The suppression list: keyed address hashes never to be mailed again without a fresh opt-in.

One entry per address, with the reason it was added (hard bounce, soft bounces, complaint,
staff after a phone call or letter, erasure). Delivery expansion and every batch check it
in SQL; confirming a new sign-up through the mailed link is the only way off it.
"""

from __future__ import annotations

from sqlmodel import Session, select

from subscriptions.addresses import AddressHasher, normalise_address
from subscriptions.consent import Evidence
from subscriptions.lifecycle import Lifecycle
from subscriptions.models import (
    ConsentChannel,
    Magazine,
    Subscriber,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)


def suppress(
    session: Session,
    *,
    digest: str,
    reason: SuppressionReason,
    note: str = "",
    replace: bool = False,
) -> Suppression:
    """Add ``digest`` to the list (keeping the first reason unless ``replace``)."""
    existing = session.exec(select(Suppression).where(Suppression.address_digest == digest)).first()
    if existing is not None and not replace:
        return existing
    entry = existing or Suppression(address_digest=digest, reason=reason)
    entry.reason = reason
    entry.note = note[:500]
    session.add(entry)
    return entry


def suppress_subscriber(
    session: Session,
    lifecycle: Lifecycle,
    subscriber: Subscriber,
    *,
    reason: SuppressionReason,
    channel: ConsentChannel,
    note: str = "",
    status: SubscriptionStatus = SubscriptionStatus.suppressed,
) -> int:
    """Put a known subscriber on the list and stop every subscription of theirs at once,
    each with its consent event on ``channel``; returns how many subscriptions ended."""
    suppress(session, digest=subscriber.address_digest, reason=reason, note=note)
    return lifecycle.end(
        session,
        subscriber,
        session.exec(select(Magazine)).all(),
        Evidence(channel),
        status=status,
    )


def suppress_by_staff(
    session: Session, *, hasher: AddressHasher, lifecycle: Lifecycle, address: str, note: str
) -> int:
    """Staff suppress an address (a phone call, a letter): stop every subscription at once,
    with consent events on the ``staff`` channel. Returns how many subscriptions ended."""
    email = normalise_address(address)
    digest = hasher.digest(email)
    suppress(session, digest=digest, reason=SuppressionReason.manual, note=note)
    subscriber = session.exec(select(Subscriber).where(Subscriber.address_digest == digest)).first()
    if subscriber is None:
        return 0
    return suppress_subscriber(
        session,
        lifecycle,
        subscriber,
        reason=SuppressionReason.manual,
        channel=ConsentChannel.staff,
        note=note,
    )
