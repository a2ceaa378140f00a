"""The issue state machine: the one module that changes ``Issue.status``.

::

    draft ──schedule──▶ scheduled ──start──▶ sending ──finish──▶ sent
      │                    │                  │   ▲
      └───────start────────┼──────────────────┘   │
                           │            pause ▼   │ resume
                           │                paused
      cancel from draft, scheduled, sending or paused ──▶ cancelled

``start`` is called with the first chunk of the audience queued (``mailer.sending``), and
sets the issue's ``expansion_cursor`` that the later chunks move on; ``finish`` only when
the last chunk is in and none of its deliveries is queued, deferred or in flight.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.errors import InvalidTransition
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus

S = IssueStatus
ALLOWED: dict[IssueStatus, frozenset[IssueStatus]] = {
    S.draft: frozenset({S.scheduled, S.sending, S.cancelled}),
    S.scheduled: frozenset({S.draft, S.sending, S.cancelled}),
    S.sending: frozenset({S.paused, S.sent, S.cancelled}),
    S.paused: frozenset({S.sending, S.cancelled}),
    S.sent: frozenset(),
    S.cancelled: frozenset(),
}
OUTSTANDING = (DeliveryStatus.queued, DeliveryStatus.deferred, DeliveryStatus.sending)


def _move(issue: Issue, target: IssueStatus) -> None:
    if target not in ALLOWED[issue.status]:
        raise InvalidTransition(
            f"issue {issue.id} is {issue.status.value}; it cannot be {target.value}"
        )
    issue.status = target
    issue.updated_at = utcnow()


def schedule(session: Session, issue: Issue, at: datetime) -> None:
    if at.tzinfo is None:
        raise InvalidTransition("the time to send must carry a time zone")
    _move(issue, S.scheduled)
    issue.scheduled_at = at
    session.add(issue)


def unschedule(session: Session, issue: Issue) -> None:
    _move(issue, S.draft)
    issue.scheduled_at = None
    session.add(issue)


def start(session: Session, issue: Issue) -> None:
    """Mark the issue as sending, its audience to be queued from the first subscriber on."""
    _move(issue, S.sending)
    issue.started_at = issue.started_at or utcnow()
    issue.expansion_cursor = 0
    session.add(issue)


def pause(session: Session, issue: Issue, reason: str | None = None) -> None:
    _move(issue, S.paused)
    issue.pause_reason = reason
    session.add(issue)


def resume(session: Session, issue: Issue) -> None:
    """Send again; an issue with nothing left to send (its last deliveries ended while it was
    paused) is sent at once, since no worker would claim anything of it to notice."""
    _move(issue, S.sending)
    issue.pause_reason = None
    session.add(issue)
    session.flush()
    if issue.id is not None:
        finish_if_done(session, issue.id)


def cancel(session: Session, issue: Issue) -> None:
    """Cancel: nothing more leaves; deliveries still waiting are skipped."""
    _move(issue, S.cancelled)
    issue.finished_at = utcnow()
    issue.expansion_cursor = None  # nobody more is queued
    session.add(issue)
    session.execute(
        update(Delivery)
        .where(col(Delivery.issue_id) == issue.id)
        .where(col(Delivery.status).in_([DeliveryStatus.queued, DeliveryStatus.deferred]))
        .values(status=DeliveryStatus.skipped, last_reply="issue cancelled")
    )


def finish_if_done(session: Session, issue_id: int) -> bool:
    """Mark a sending issue sent once nothing is outstanding; True if it was."""
    # Read without a lock first: a worker asks after every batch, and must not wait for an
    # expansion chunk holding the row. The expansion asks again after its last chunk.
    status, cursor = session.exec(
        select(Issue.status, Issue.expansion_cursor).where(Issue.id == issue_id)
    ).one()
    if status is not S.sending or cursor is not None:
        return False
    issue = session.exec(select(Issue).where(Issue.id == issue_id).with_for_update()).one()
    if issue.status is not S.sending or issue.expansion_cursor is not None:
        return False
    # Whether any is left, not how many: a worker asks after every batch, and counting the
    # rows still queued read the whole rest of a large issue each time.
    outstanding = session.exec(
        select(Delivery.id)
        .where(col(Delivery.issue_id) == issue_id)
        .where(col(Delivery.status).in_(OUTSTANDING))
        .limit(1)
    ).first()
    if outstanding is not None:
        return False
    _move(issue, S.sent)
    issue.finished_at = utcnow()
    session.add(issue)
    return True
