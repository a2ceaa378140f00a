"""Aggregates for the staff dashboard and issue reports: counts only, never a person.

An issue's failures are grouped by their reply code and RFC 3463 status, never by the
relay's text: a text names whom it refused, and a group of one is a person.

Days are UTC calendar days. "Unsubscribes caused" by an issue are the withdrawals from its
magazine by people it was delivered to, between its start and the start of the magazine's
next issue (the last-touch attribution mail services use); a withdrawal reaches the ledger
without the issue that prompted it, so this is the honest bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, literal_column
from sqlmodel import Session, col, select

from mailer import bounces, queue
from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscriptions.charts import Chart, Series, bar_chart, line_chart
from subscriptions.models import (
    ConsentAction,
    ConsentEvent,
    ConsentPurpose,
    Magazine,
    Subscription,
    localised,
)

WINDOW_DAYS = 30
LIVE = (IssueStatus.sending, IssueStatus.paused, IssueStatus.scheduled)


def _days(end: date, count: int) -> list[date]:
    return [end - timedelta(days=count - 1 - i) for i in range(count)]


def _day(value: Any) -> date:
    """The database's ``date(...)``: a date on PostgreSQL, ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _by_day(session: Session, column: Any, *where: Any) -> dict[tuple[int, date], int]:
    day = func.date(column)
    rows = session.exec(
        select(Subscription.magazine_id, day, func.count())
        .where(column.is_not(None), *where)
        .group_by(col(Subscription.magazine_id), day)
    ).all()
    return {(int(m), _day(d)): int(n) for m, d, n in rows}


def subscribers_over_time(session: Session, today: date, locale: str = "en") -> Chart:
    """Confirmed subscribers per magazine at the end of each of the last 30 days."""
    days = _days(today, WINDOW_DAYS)
    start = datetime.combine(days[0], time.min, tzinfo=UTC)
    confirmed_at, ended_at = col(Subscription.confirmed_at), col(Subscription.ended_at)
    before = dict(
        session.exec(
            select(Subscription.magazine_id, func.count())
            .where(confirmed_at < start)
            .where(ended_at.is_(None) | (ended_at >= start))
            .group_by(col(Subscription.magazine_id))
        ).all()
    )
    joined = _by_day(session, confirmed_at, confirmed_at >= start)
    left = _by_day(session, ended_at, ended_at >= start, confirmed_at.is_not(None))
    series = []
    for magazine in session.exec(select(Magazine).order_by(col(Magazine.id))).all():
        assert magazine.id is not None
        count = int(before.get(magazine.id, 0))
        values = []
        for day in days:
            count += joined.get((magazine.id, day), 0) - left.get((magazine.id, day), 0)
            values.append(float(count))
        series.append(Series(localised(magazine.title, locale) or magazine.slug, values))
    return line_chart("Subscribers per magazine", [d.strftime("%m-%d") for d in days], series)


def confirmations_and_unsubscribes(session: Session, today: date) -> Chart:
    days = _days(today, WINDOW_DAYS)
    start = datetime.combine(days[0], time.min, tzinfo=UTC)
    day = func.date(col(ConsentEvent.occurred_at))
    rows = session.exec(
        select(ConsentEvent.action, day, func.count())
        .where(
            ConsentEvent.purpose == ConsentPurpose.magazine,
            col(ConsentEvent.occurred_at) >= start,
            col(ConsentEvent.action).in_([ConsentAction.confirmed, ConsentAction.withdrawn]),
        )
        .group_by(col(ConsentEvent.action), day)
    ).all()
    found = {(ConsentAction(a), _day(d)): int(n) for a, d, n in rows}
    return bar_chart(
        "Confirmations and unsubscribes per day",
        [d.strftime("%m-%d") for d in days],
        [
            Series(
                "confirmations", [float(found.get((ConsentAction.confirmed, d), 0)) for d in days]
            ),
            Series(
                "unsubscribes", [float(found.get((ConsentAction.withdrawn, d), 0)) for d in days]
            ),
        ],
    )


@dataclass(frozen=True, slots=True)
class IssueLine:
    id: int
    subject: str
    magazine: str
    status: str
    scheduled_at: datetime | None
    started_at: datetime | None
    total: int
    done: int
    percent: float
    counts: dict[str, int]
    rate: float


def issue_line(session: Session, issue: Issue, magazine: str) -> IssueLine:
    assert issue.id is not None
    found = queue.progress(session, issue.id)
    assert found is not None
    return IssueLine(
        id=issue.id,
        subject=issue.subject,
        magazine=magazine,
        # The total still grows while the audience is being queued: say so beside the state.
        status=f"{found.status}, queuing" if found.queuing else found.status,
        scheduled_at=issue.scheduled_at,
        started_at=issue.started_at,
        total=found.total,
        done=found.done,
        percent=round(100 * found.done / found.total, 1) if found.total else 0.0,
        counts=found.counts,
        rate=round(found.rate_per_second, 1),
    )


def recent_issues(session: Session, limit: int = 20, locale: str = "en") -> list[IssueLine]:
    titles = {
        m.id: localised(m.title, locale) or m.slug for m in session.exec(select(Magazine)).all()
    }
    issues = session.exec(select(Issue).order_by(col(Issue.id).desc()).limit(limit)).all()
    return [issue_line(session, i, titles.get(i.magazine_id, "")) for i in issues]


def feedback_rates(session: Session, lines: list[IssueLine]) -> Chart:
    """Hard-bounce, block and complaint rates of the issues that went out (oldest first).
    Bounces and blocks are counted once each on the issue whether they came at sending or
    later, out of every message that was tried; complaints out of those that arrived."""
    went = [line for line in reversed(lines) if line.counts.get("sent", 0)][-12:]
    issues = {
        i.id: i
        for i in session.exec(select(Issue).where(col(Issue.id).in_([w.id for w in went]))).all()
    }
    bounce, block, complaint = [], [], []
    for line in went:
        sent = line.counts["sent"]
        tried = sent + line.counts.get("failed", 0)
        issue = issues[line.id]
        bounce.append(issue.hard_bounces / tried)
        block.append(issue.blocks / tried)
        complaint.append(issue.complaints / sent)
    return bar_chart(
        "Bounce, block and complaint rates per issue",
        [f"#{line.id}" for line in went],
        [Series("bounces", bounce), Series("blocks", block), Series("complaints", complaint)],
        percent=True,
    )


@dataclass(frozen=True, slots=True)
class Failures:
    """The failed deliveries of an issue that share a reply code and enhanced status."""

    code: int | None  # None: it was sent, then bounced
    status: str | None
    meaning: str  # RFC 3463's words for the status
    verdict: str  # what it did to the readers: hard, soft or block (mailer.bounces)
    count: int


@dataclass(frozen=True, slots=True)
class Report:
    line: IssueLine
    hard_bounces: int
    blocks: int
    complaints: int
    unsubscribes: int
    failures: list[Failures]  # the most common first


def report(session: Session, issue: Issue, magazine: Magazine) -> Report:
    assert issue.id is not None
    line = issue_line(session, issue, localised(magazine.title, "en") or magazine.slug)
    unsubscribes = 0
    if issue.started_at is not None:
        next_start = session.exec(
            select(func.min(Issue.started_at)).where(
                Issue.magazine_id == issue.magazine_id,
                col(Issue.started_at) > issue.started_at,
            )
        ).one()
        recipients = select(Delivery.subscriber_id).where(
            Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.sent
        )
        query = select(func.count(func.distinct(ConsentEvent.subscriber_id))).where(
            ConsentEvent.purpose == ConsentPurpose.magazine,
            ConsentEvent.scope == magazine.slug,
            ConsentEvent.action == ConsentAction.withdrawn,
            col(ConsentEvent.occurred_at) >= issue.started_at,
            col(ConsentEvent.subscriber_id).in_(recipients),
        )
        if next_start is not None:
            query = query.where(col(ConsentEvent.occurred_at) < next_start)
        unsubscribes = int(session.exec(query).one())
    groups = session.exec(
        select(Delivery.last_code, Delivery.last_enhanced_status, func.count())
        .where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.failed)
        .group_by(col(Delivery.last_code), col(Delivery.last_enhanced_status))
        .order_by(literal_column("3").desc())
        .limit(20)
    ).all()
    return Report(
        line=line,
        hard_bounces=issue.hard_bounces,
        blocks=issue.blocks,
        complaints=issue.complaints,
        unsubscribes=unsubscribes,
        failures=[_failures(code, status, int(n)) for code, status, n in groups],
    )


def _failures(code: int | None, status: str | None, count: int) -> Failures:
    found = bounces.verdict(status, code)
    return Failures(code, status, bounces.meaning(status), found.value if found else "", count)


def today() -> date:
    return utcnow().date()
