"""Test sends of issues: how many a staff member and an issue may have, the audit row of each,
and which addresses are never mailed, test or not (``mailer.api.TestSendGate``).

A test send is recorded in the audit log before any message leaves (action
``issue.test_send``, target the issue, the addresses as subjects: a privacy officer sees
whose addresses got test mail), and those rows are what the limits count: exact across web
processes and hosts, and kept across restarts. The check and the record are one
transaction that holds the audit log's head, so two test sends at once cannot both take
the last of a limit.

Skipped, never mailed: an address on the suppression list (bounced, complained, erased,
unsubscribed from everything) and one whose subscription to the issue's magazine ended.
The answer says "skipped" in the same words whatever the reason: a marketer learns that
mailmag does not mail that address, not why (whether a person unsubscribed, complained or
was erased is not a marketer's to know; marketers see no individual subscriber), and the
limits bound how many addresses one can try. Skipped addresses count toward the limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from mailer.api import Operator, TestSendClearance
from mailer.clock import utcnow
from mailer.errors import TestSendLimited
from mailer.models import Issue
from subscriptions import audit
from subscriptions.addresses import AddressHasher
from subscriptions.consent import locked_head
from subscriptions.db import for_writing
from subscriptions.models import (
    AuditEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)

ACTION = "issue.test_send"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ENDED = (SubscriptionStatus.unsubscribed, SubscriptionStatus.suppressed)


@dataclass(frozen=True, slots=True)
class TestSendLimits:
    """Test messages (addresses, skipped ones too) per staff member an hour, and per issue,
    from all staff, a day."""

    __test__ = False  # not a pytest test class, whatever its name

    per_staff_hour: int = 50
    per_issue_day: int = 100


class StoreTestSends:
    """The opt-in store's side of a test send."""

    def __init__(self, engine: Engine, hasher: AddressHasher, limits: TestSendLimits) -> None:
        self.engine = engine
        self.hasher = hasher
        self.limits = limits

    def clear(
        self, operator: Operator, issue_id: int, addresses: Sequence[str]
    ) -> TestSendClearance:
        digests = {address: self.hasher.digest(address) for address in addresses}
        now = utcnow()
        with Session(for_writing(self.engine)) as session:
            locked_head(session, audit.CHAIN)  # until commit: the counts below stay true
            mine = col(AuditEvent.actor).startswith(f"{operator.key} ", autoescape=True)
            _check(
                _used(session, mine, now - HOUR),
                wanted=len(addresses),
                limit=self.limits.per_staff_hour,
                window=HOUR,
                now=now,
                what=f"at most {self.limits.per_staff_hour} test messages per staff member an hour",
            )
            _check(
                _used(session, col(AuditEvent.target) == f"issue:{issue_id}", now - DAY),
                wanted=len(addresses),
                limit=self.limits.per_issue_day,
                window=DAY,
                now=now,
                what=f"at most {self.limits.per_issue_day} test messages of one issue a day",
            )
            blocked = self._not_mailed(session, issue_id, set(digests.values()))
            skipped = tuple(a for a in addresses if digests[a] in blocked)
            audit.record(
                session,
                audit.Actor(operator.name, operator.source),
                ACTION,
                target=f"issue:{issue_id}",
                detail={"addresses": len(addresses), "skipped": len(skipped)},
                subjects=digests.values(),
            )
            session.commit()
        return TestSendClearance(
            send=tuple(a for a in addresses if a not in skipped), skipped=skipped
        )

    @staticmethod
    def _not_mailed(session: Session, issue_id: int, digests: set[str]) -> set[str]:
        suppressed = set(
            session.exec(
                select(Suppression.address_digest).where(
                    col(Suppression.address_digest).in_(digests)
                )
            ).all()
        )
        issue = session.get(Issue, issue_id)
        if issue is None:
            return suppressed
        left = session.exec(
            select(Subscriber.address_digest)
            .join(Subscription, col(Subscription.subscriber_id) == Subscriber.id)
            .where(col(Subscriber.address_digest).in_(digests))
            .where(Subscription.magazine_id == issue.magazine_id)
            .where(col(Subscription.status).in_(ENDED))
        ).all()
        return suppressed | set(left)


def _used(
    session: Session, whose: ColumnElement[bool], since: datetime
) -> list[tuple[datetime, int]]:
    """The test sends in the window, oldest first: when, and how many addresses."""
    rows = session.exec(
        select(AuditEvent.occurred_at, AuditEvent.subjects)
        .where(AuditEvent.action == ACTION)
        .where(whose)
        .where(col(AuditEvent.occurred_at) > since)
        .order_by(col(AuditEvent.occurred_at))
    ).all()
    return [(when, count) for when, count in rows]


def _check(
    used: list[tuple[datetime, int]],
    *,
    wanted: int,
    limit: int,
    window: timedelta,
    now: datetime,
    what: str,
) -> None:
    """Refuse ``wanted`` more past ``limit``, saying when enough of ``used`` has aged out."""
    excess = sum(count for _when, count in used) + wanted - limit
    if excess <= 0:
        return
    freed = 0
    for when, count in used:
        freed += count
        if freed >= excess:
            wait = max(1, math.ceil((when + window - now).total_seconds()))
            minutes = math.ceil(wait / 60)
            raise TestSendLimited(
                f"test sends: {what}; these {wanted} may go in {minutes} minute"
                f"{'s' if minutes != 1 else ''}",
                retry_after=wait,
            )
    raise AssertionError("a limit below one call's addresses")  # settings keep it >= 10
