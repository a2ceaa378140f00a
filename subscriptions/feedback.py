"""The opt-in store's side of inbound mail: keeping raw messages and acting on them.

- a mailto unsubscribe ends the magazine the delivery was for;
- a complaint ends every subscription and suppresses the address;
- a hard bounce suppresses the address and marks the delivery failed;
- a block (refused for policy or content, 5.7.x) suppresses nobody: it marks the delivery
  failed and counts on the issue, for the brake and the report;
- a soft bounce adds one to a score that halves every week; past
  ``soft_bounce_threshold`` the address is suppressed; one that says the message failed
  for good (a 5.x.x status, such as a full mailbox) marks the delivery failed too;
- auto-replies and anything unmatched change nothing.

Each change of a subscription writes its consent event (channel ``mailto``, ``complaint``
or ``bounce``). Suppression is by keyed address hash, so it outlives an erasure.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.brake import COUNTED, BrakePolicy, count_feedback
from mailer.clock import utcnow
from mailer.feedback import Feedback, FeedbackKind
from mailer.models import Delivery, DeliveryStatus, Issue
from mailer.redact import storable
from mailer.transactions import for_writing
from subscriptions.consent import Evidence
from subscriptions.lifecycle import Lifecycle
from subscriptions.models import (
    ConsentChannel,
    InboundMessage,
    InboundStatus,
    Magazine,
    Subscriber,
    SubscriptionStatus,
    SuppressionReason,
)
from subscriptions.suppression import suppress_subscriber

SCORE_HALF_LIFE = timedelta(days=7)


class StoreFeedback:
    def __init__(
        self,
        engine: Engine,
        lifecycle: Lifecycle,
        soft_bounce_threshold: float,
        brake: BrakePolicy | None = None,
    ) -> None:
        self.engine = engine
        self.lifecycle = lifecycle
        self.threshold = soft_bounce_threshold
        self.brake = brake or BrakePolicy()

    # --- InboundStore ------------------------------------------------------------------------

    def save(self, *, mail_from: str, recipient: str, raw: bytes) -> int:
        with Session(for_writing(self.engine)) as session:
            stored = InboundMessage(mail_from=mail_from[:320], recipient=recipient[:320], raw=raw)
            session.add(stored)
            session.commit()
            assert stored.id is not None
            return stored.id

    def done(self, message_id: int, feedback: Feedback, outcome: str) -> None:
        with Session(for_writing(self.engine)) as session:
            stored = session.get(InboundMessage, message_id)
            if stored is None:
                return
            acted = feedback.kind not in (FeedbackKind.auto_reply, FeedbackKind.unknown)
            stored.status = InboundStatus.processed if acted else InboundStatus.ignored
            stored.kind = feedback.kind.value
            stored.delivery_id = feedback.delivery_id
            stored.outcome = outcome[:500]
            session.add(stored)
            session.commit()

    # --- FeedbackSink ------------------------------------------------------------------------

    def apply(self, feedback: Feedback) -> str:
        with Session(for_writing(self.engine)) as session:
            outcome = self.apply_in(session, feedback)
            session.commit()
            return outcome

    def apply_in(self, session: Session, feedback: Feedback) -> str:
        """Act on ``feedback`` in the caller's transaction (which the caller commits)."""
        if feedback.kind in (FeedbackKind.auto_reply, FeedbackKind.unknown):
            return feedback.detail
        if feedback.delivery_id is None:
            return "no delivery matches this message: nothing changed"
        found = session.exec(
            select(Delivery, Subscriber, Magazine)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)  # type: ignore[arg-type]
            .join(Issue, Issue.id == Delivery.issue_id)  # type: ignore[arg-type]
            .join(Magazine, Magazine.id == Issue.magazine_id)  # type: ignore[arg-type]
            .where(Delivery.id == feedback.delivery_id)
        ).first()
        if found is None:
            return "the delivery's subscriber no longer exists: nothing changed"
        delivery, subscriber, magazine = found
        outcome = self._act(session, feedback, delivery, subscriber, magazine)
        if feedback.kind in COUNTED:
            braked = count_feedback(
                session, delivery_id=feedback.delivery_id, kind=feedback.kind, policy=self.brake
            )
            if braked:
                outcome += f"; issue {delivery.issue_id} paused: {braked}"
        return outcome

    def _act(
        self,
        session: Session,
        feedback: Feedback,
        delivery: Delivery,
        subscriber: Subscriber,
        magazine: Magazine,
    ) -> str:
        if feedback.kind is FeedbackKind.unsubscribe:
            ended = self.lifecycle.end(
                session, subscriber, [magazine], Evidence(ConsentChannel.mailto)
            )
            return f"unsubscribed from {magazine.slug}" if ended else "already unsubscribed"
        if feedback.kind is FeedbackKind.complaint:
            suppress_subscriber(
                session,
                self.lifecycle,
                subscriber,
                reason=SuppressionReason.complaint,
                channel=ConsentChannel.complaint,
                note=feedback.detail,
                status=SubscriptionStatus.unsubscribed,
            )
            return "complaint: unsubscribed from everything and suppressed"
        if feedback.kind is FeedbackKind.hard_bounce:
            suppress_subscriber(
                session,
                self.lifecycle,
                subscriber,
                reason=SuppressionReason.hard_bounce,
                channel=ConsentChannel.bounce,
                note=feedback.detail,
            )
            self._failed(session, delivery, feedback)
            return "hard bounce: suppressed"
        if feedback.kind is FeedbackKind.blocked:
            self._failed(session, delivery, feedback)
            return (
                f"blocked ({feedback.status or 'policy'}): counted on the issue, nobody suppressed"
            )
        if (feedback.status or "").startswith("5"):
            self._failed(session, delivery, feedback)
        return self._soft_bounce(session, subscriber, feedback)

    @staticmethod
    def _failed(session: Session, delivery: Delivery, feedback: Feedback) -> None:
        """A message that was sent but bounced for good did not arrive: the delivery failed."""
        if delivery.status is DeliveryStatus.sent:
            delivery.status = DeliveryStatus.failed
            delivery.last_code = None  # the 2xx of sending no longer describes it
            delivery.last_reply = storable(f"bounced: {feedback.detail}")
            delivery.last_enhanced_status = feedback.status
            session.add(delivery)

    def _soft_bounce(self, session: Session, subscriber: Subscriber, feedback: Feedback) -> str:
        now = utcnow()
        score = subscriber.bounce_score
        if subscriber.bounce_scored_at is not None:
            age = (now - subscriber.bounce_scored_at) / SCORE_HALF_LIFE
            score *= 0.5**age
        subscriber.bounce_score = score + 1
        subscriber.bounce_scored_at = now
        session.add(subscriber)
        if subscriber.bounce_score < self.threshold:
            return f"soft bounce: score {subscriber.bounce_score:.2f}"
        suppress_subscriber(
            session,
            self.lifecycle,
            subscriber,
            reason=SuppressionReason.soft_bounce,
            channel=ConsentChannel.bounce,
            note=feedback.detail,
        )
        return f"soft bounces past {self.threshold:g}: suppressed"
