"""Starting an issue: check it can lawfully go out, mark it sending, queue its audience.

Used by "send now", by the scheduler when an issue falls due, and by ``mailmag send``.

The audience is queued in chunks of subscribers in id order. Each chunk is one transaction
that holds the issue row, queues the chunk's deliveries and moves the issue's
``expansion_cursor`` past them; the first also marks the issue sending. So workers start
on the first chunk while the rest is still being queued, and an expansion that a crash cut
short resumes from its cursor: the scheduler looks for such issues on every sweep. The
issue is not marked sent while recipients are still to be queued (``issues.finish_if_done``
is asked again when the last chunk is in). Everything here is safe to repeat, and to run
from two processes at once: each chunk reads the cursor under the row lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer import issues
from mailer.audience import Audience, Expansion, IssueAudience
from mailer.errors import InvalidTransition, MailerError
from mailer.models import Issue, IssueStatus
from mailer.transactions import for_writing
from mailer.worker import IssuePreparer

log = logging.getLogger(__name__)

FIRST_CHUNK = 1_000  # small: the first message leaves a moment after "send now"
# Large enough that a chunk's own cost is small beside its rows, small enough that the issue
# row (and SQLite's write lock) is held for a fraction of a second at a time.
CHUNK = 20_000
STARTABLE = tuple(issues.STAFF_ACTIONS[issues.Action.send_now].sources)
EXPANDING = (IssueStatus.sending, IssueStatus.paused)

_busy_lock = threading.Lock()
_busy: set[int] = set()  # issues this process is expanding now


@contextmanager
def _expanding(issue_id: int) -> Iterator[bool]:
    """Whether this thread may expand the issue: one thread per process at a time (another
    process may still work on it; the row lock keeps the two correct)."""
    with _busy_lock:
        mine = issue_id not in _busy
        _busy.add(issue_id)
    try:
        yield mine
    finally:
        if mine:
            with _busy_lock:
                _busy.discard(issue_id)


def start_issue(
    engine: Engine,
    audience: Audience,
    preparer: IssuePreparer,
    issue_id: int,
    *,
    complete: bool = True,
) -> int:
    """Start the issue if it has not started, and queue its recipients; return how many this
    call queued. With ``complete`` false only the first chunk is queued: the caller queues
    the rest later with another call (and the scheduler does, should that one never come)."""
    with Session(engine, expire_on_commit=False) as session:
        issue = session.get(Issue, issue_id)
    if issue is None:
        raise InvalidTransition(f"there is no issue {issue_id}")
    if issue.status in EXPANDING and issue.expansion_cursor is None:
        return 0
    if issue.status not in STARTABLE + EXPANDING:
        raise InvalidTransition(f"issue {issue_id} is {issue.status.value}; it cannot start")
    _prepared, issue_audience = preparer.prepare(issue)  # refuses a non-compliant issue
    queued = 0
    with _expanding(issue_id) as mine:
        if not mine:
            return 0
        limit = FIRST_CHUNK
        while (step := _chunk(engine, audience, issue_audience, limit)) is not None:
            queued += step.queued
            if step.cursor is None or not complete:
                break
            limit = CHUNK
    return queued


def _chunk(
    engine: Engine, audience: Audience, issue_audience: IssueAudience, limit: int
) -> Expansion | None:
    """Queue the next chunk; None if there was nothing left to queue."""
    issue_id = issue_audience.issue_id
    with Session(for_writing(engine)) as session:
        issue = session.exec(select(Issue).where(Issue.id == issue_id).with_for_update()).one()
        if issue.status in STARTABLE:
            issues.start(session, issue)
        elif issue.status not in EXPANDING or issue.expansion_cursor is None:
            return None
        assert issue.expansion_cursor is not None
        step = audience.expand(session.connection(), issue_audience, issue.expansion_cursor, limit)
        issue.expansion_cursor = step.cursor
        session.add(issue)
        if step.cursor is None:
            session.flush()
            issues.finish_if_done(session, issue_id)  # an audience of none is sent at once
        session.commit()
    return step


def queue_the_rest(
    engine: Engine, audience: Audience, preparer: IssuePreparer, issue_id: int
) -> None:
    """Finish an expansion begun with ``complete=False`` (for a background task: a failure
    is logged, and the scheduler's sweep tries again)."""
    try:
        start_issue(engine, audience, preparer, issue_id)
    except MailerError as exc:
        log.warning("issue %s: queuing its recipients stopped: %s", issue_id, exc)
