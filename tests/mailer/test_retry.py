"""Temporary failures are retried with growing pauses until the deadline, then failed."""

from __future__ import annotations

from datetime import timedelta

from mailer.clock import utcnow
from mailer.models import DeliveryStatus
from mailer.queue import Claim
from mailer.retry import RetryPolicy, backoff
from mailer.worker import DeliveryWorker, WorkerConfig


def test_backoff_doubles_from_a_minute_to_an_hour() -> None:
    assert [backoff(n).total_seconds() for n in range(8)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]


def test_a_deferral_past_the_deadline_fails_with_the_reason() -> None:
    worker = DeliveryWorker.__new__(DeliveryWorker)
    worker.config = WorkerConfig(retry=RetryPolicy(deadline=timedelta(days=3)))
    claim = Claim(delivery_id=1, issue_id=1, subscriber_id=1, fence=1, attempts=4)
    fresh = worker._deferred(claim, utcnow(), 451, "try later")
    assert fresh.status is DeliveryStatus.deferred
    assert fresh.retry_at is not None
    assert fresh.retry_at > utcnow() + timedelta(minutes=15)
    old = worker._deferred(claim, utcnow() - timedelta(days=3), 451, "try later")
    assert old.status is DeliveryStatus.failed
    assert old.reply == "gave up after 5 attempts: try later"
