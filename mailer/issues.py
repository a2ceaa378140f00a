"""The issue state machine: the one module that changes ``Issue.status``.

::

    draft ──schedule──▶ scheduled ──start──▶ sending ──finish──▶ sent
      │  ◀──unschedule──   │                  │   ▲
      └───────start────────┼──────────────────┘   │
                           │            pause ▼   │ resume
                           │                paused
      cancel from sending or paused ──▶ cancelled

``STAFF_ACTIONS`` is the one table of what staff may do to an issue in each status: the
marketing API refuses what it does not allow (409), and the issue editor offers exactly what
it allows (``actions_by_status``), so a button is never shown for a move the server refuses.
Two of its actions change no status: ``save`` (a draft's content) and ``test-send``; both
are for drafts alone, since a scheduled issue is the one that will go out (unschedule it to
change it) and a test of an issue that went out proves nothing more. A draft or a scheduled
issue is not cancelled: it has sent nothing, and unscheduling it stops it.

``start`` is called with the first chunk of the audience queued (``mailer.sending``), and
sets the issue's ``expansion_cursor`` that the later chunks move on; ``finish`` only when
the last chunk is in and none of its deliveries is queued, deferred or in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import update
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.errors import InvalidTransition
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus

S = IssueStatus


class Action(StrEnum):
    """What staff can do to an issue, named as the marketing API's paths name them
    (``POST /api/v1/issues/{id}/<action>``; ``save`` is ``PATCH /api/v1/issues/{id}``)."""

    save = "save"
    test_send = "test-send"
    schedule = "schedule"
    send_now = "send-now"
    unschedule = "unschedule"
    pause = "pause"
    resume = "resume"
    cancel = "cancel"


@dataclass(frozen=True)
class Move:
    """From which statuses an action may be taken, and the status it leaves the issue in
    (None: it stays where it is)."""

    sources: frozenset[IssueStatus]
    target: IssueStatus | None
    refusal: str = ""  # for an action that keeps the status: why it is refused


STAFF_ACTIONS: dict[Action, Move] = {
    Action.save: Move(frozenset({S.draft}), None, "only a draft can be changed"),
    Action.test_send: Move(frozenset({S.draft}), None, "only a draft is sent as a test"),
    Action.schedule: Move(frozenset({S.draft}), S.scheduled),
    Action.send_now: Move(frozenset({S.draft, S.scheduled}), S.sending),
    Action.unschedule: Move(frozenset({S.scheduled}), S.draft),
    Action.pause: Move(frozenset({S.sending}), S.paused),
    Action.resume: Move(frozenset({S.paused}), S.sending),
    Action.cancel: Move(frozenset({S.sending, S.paused}), S.cancelled),
}
# The engine's own move: the last delivery of a sending issue is recorded.
FINISH = Move(frozenset({S.sending}), S.sent)

ALLOWED: dict[IssueStatus, frozenset[IssueStatus]] = {
    status: frozenset(
        move.target
        for move in (*STAFF_ACTIONS.values(), FINISH)
        if status in move.sources and move.target is not None
    )
    for status in IssueStatus
}


def actions_for(status: IssueStatus) -> tuple[Action, ...]:
    """What staff may do to an issue in ``status``, in the table's order."""
    return tuple(action for action, move in STAFF_ACTIONS.items() if status in move.sources)


def actions_by_status() -> dict[str, list[str]]:
    """The table as the issue editor reads it: each status's actions, by name."""
    return {status.value: [a.value for a in actions_for(status)] for status in IssueStatus}


def require(issue: Issue, action: Action) -> None:
    """Refuse ``action`` unless the table allows it in the issue's status."""
    _check(issue, STAFF_ACTIONS[action])


def _check(issue: Issue, move: Move) -> None:
    if issue.status in move.sources:
        return
    if move.target is None:
        raise InvalidTransition(f"issue {issue.id} is {issue.status.value}; {move.refusal}")
    raise InvalidTransition(
        f"issue {issue.id} is {issue.status.value}; it cannot be {move.target.value}"
    )


OUTSTANDING = (DeliveryStatus.queued, DeliveryStatus.deferred, DeliveryStatus.sending)


def _move(issue: Issue, move: Move) -> None:
    _check(issue, move)
    assert move.target is not None
    issue.status = move.target
    issue.updated_at = utcnow()


def schedule(session: Session, issue: Issue, at: datetime) -> None:
    if at.tzinfo is None:
        raise InvalidTransition("the time to send must carry a time zone")
    _move(issue, STAFF_ACTIONS[Action.schedule])
    issue.scheduled_at = at
    session.add(issue)


def unschedule(session: Session, issue: Issue) -> None:
    _move(issue, STAFF_ACTIONS[Action.unschedule])
    issue.scheduled_at = None
    session.add(issue)


def start(session: Session, issue: Issue) -> None:
    """Mark the issue as sending, its audience to be queued from the first subscriber on."""
    _move(issue, STAFF_ACTIONS[Action.send_now])
    issue.started_at = issue.started_at or utcnow()
    issue.expansion_cursor = 0
    session.add(issue)


def pause(session: Session, issue: Issue, reason: str | None = None) -> None:
    _move(issue, STAFF_ACTIONS[Action.pause])
    issue.pause_reason = reason
    session.add(issue)


def resume(session: Session, issue: Issue) -> None:
    """Send again; an issue with nothing left to send (its last deliveries ended while it was
    paused) is sent at once, since no worker would claim anything of it to notice."""
    _move(issue, STAFF_ACTIONS[Action.resume])
    issue.pause_reason = None
    session.add(issue)
    session.flush()
    if issue.id is not None:
        finish_if_done(session, issue.id)


def cancel(session: Session, issue: Issue) -> None:
    """Cancel: nothing more leaves; deliveries still waiting are skipped."""
    _move(issue, STAFF_ACTIONS[Action.cancel])
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
    _move(issue, FINISH)
    issue.finished_at = utcnow()
    session.add(issue)
    return True
