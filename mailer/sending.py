"""Starting an issue: check it can lawfully go out, queue its audience, mark it sending.

Used by "send now", by the scheduler when an issue falls due, and by ``mailmag send``. The
steps are safe to repeat: expansion skips recipients already queued, and an issue already
sending is left as it is.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer import issues
from mailer.audience import Audience
from mailer.errors import InvalidTransition
from mailer.models import Issue, IssueStatus
from mailer.transactions import for_writing
from mailer.worker import IssuePreparer


def start_issue(engine: Engine, audience: Audience, preparer: IssuePreparer, issue_id: int) -> int:
    """Queue the issue's recipients and set it sending; return how many were queued now."""
    with Session(engine, expire_on_commit=False) as session:
        issue = session.get(Issue, issue_id)
        if issue is None:
            raise InvalidTransition(f"there is no issue {issue_id}")
    if issue.status is IssueStatus.sending:
        return 0
    if issue.status not in (IssueStatus.draft, IssueStatus.scheduled):
        raise InvalidTransition(f"issue {issue_id} is {issue.status.value}; it cannot start")
    _prepared, issue_audience = preparer.prepare(issue)  # refuses a non-compliant issue
    queued = audience.expand(issue_audience)
    with Session(for_writing(engine)) as session:
        fresh = session.get(Issue, issue_id)
        assert fresh is not None
        if fresh.status is not IssueStatus.sending:
            issues.start(session, fresh)
        session.commit()
    return queued
