"""The brake: an issue that draws too many complaints, hard bounces or blocks pauses itself.

Every complaint, hard bounce and block (a refusal for policy or content, RFC 3463 5.7.x,
which suppresses nobody: ``mailer.bounces``) is counted on its issue. Once the issue has at
least ``min_deliveries`` messages out, a complaint rate above ``complaint_rate`` (default
0.1 %), a hard-bounce rate above ``bounce_rate`` (default 5 %) or a block rate above
``block_rate`` (default 2 %: providers refusing an issue as spam is a reputation fire, and
sending on makes it worse) pauses it, with the reason in ``Issue.pause_reason`` for
marketing to read before deciding to resume or cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from mailer import issues
from mailer.feedback import FeedbackKind
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus


@dataclass(frozen=True, slots=True)
class BrakePolicy:
    complaint_rate: float = 0.001
    bounce_rate: float = 0.05
    block_rate: float = 0.02
    min_deliveries: int = 1000


COUNTED = frozenset({FeedbackKind.complaint, FeedbackKind.hard_bounce, FeedbackKind.blocked})


def count_feedback(
    session: Session, *, delivery_id: int, kind: FeedbackKind, policy: BrakePolicy
) -> str | None:
    """Count one complaint, hard bounce or block (``COUNTED``) on its issue; pause the issue
    if it must brake.

    Returns the reason when this call paused the issue."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return None
    issue = session.exec(select(Issue).where(Issue.id == delivery.issue_id).with_for_update()).one()
    if kind is FeedbackKind.complaint:
        issue.complaints += 1
    elif kind is FeedbackKind.blocked:
        issue.blocks += 1
    else:
        issue.hard_bounces += 1
    session.add(issue)
    if issue.status is not IssueStatus.sending:
        return None
    delivered = session.exec(
        select(func.count())
        .select_from(Delivery)
        .where(col(Delivery.issue_id) == issue.id)
        .where(col(Delivery.status).in_([DeliveryStatus.sent, DeliveryStatus.failed]))
    ).one()
    if delivered < policy.min_deliveries:
        return None
    reason = None
    if issue.complaints / delivered > policy.complaint_rate:
        reason = (
            f"complaint rate {issue.complaints / delivered:.2%} is above "
            f"{policy.complaint_rate:.2%} after {delivered} deliveries"
        )
    elif issue.hard_bounces / delivered > policy.bounce_rate:
        reason = (
            f"hard-bounce rate {issue.hard_bounces / delivered:.2%} is above "
            f"{policy.bounce_rate:.2%} after {delivered} deliveries"
        )
    elif issue.blocks / delivered > policy.block_rate:
        reason = (
            f"block rate {issue.blocks / delivered:.2%} (refused for policy or content) is "
            f"above {policy.block_rate:.2%} after {delivered} deliveries"
        )
    if reason is not None:
        issues.pause(session, issue, reason)
    return reason
