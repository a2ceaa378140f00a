"""Prometheus metrics at ``/metrics``: what an operator watches, no personal data.

Counted as they happen: sign-ups, confirmations and unsubscribes (by channel), HTTP requests
by route template and status class with their latency. Read at each scrape: whether this
process leads the scheduler and how many sweeps it ran; from the database, deliveries by
state (the queue depth is queued + deferred + sending), subscriptions and issues by status,
and messages sent in the last minute. Set ``MAILMAG_METRICS_TOKEN`` to
require ``Authorization: Bearer <token>`` from the scraper.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer.clock import utcnow
from mailer.models import Delivery, Issue
from mailer.scheduler import Scheduler
from subscriptions.models import Subscription


class StoreCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with Session(self.engine) as session:
            deliveries = GaugeMetricFamily(
                "mailmag_deliveries", "Deliveries by state.", labels=["state"]
            )
            for state, count in session.exec(
                select(Delivery.status, func.count()).group_by(col(Delivery.status))
            ).all():
                deliveries.add_metric([str(state)], int(count))
            yield deliveries
            subscriptions = GaugeMetricFamily(
                "mailmag_subscriptions", "Subscriptions by status.", labels=["status"]
            )
            for state, count in session.exec(
                select(Subscription.status, func.count()).group_by(col(Subscription.status))
            ).all():
                subscriptions.add_metric([str(state)], int(count))
            yield subscriptions
            issues = GaugeMetricFamily("mailmag_issues", "Issues by status.", labels=["status"])
            for state, count in session.exec(
                select(Issue.status, func.count()).group_by(col(Issue.status))
            ).all():
                issues.add_metric([str(state)], int(count))
            yield issues
            recent = session.exec(
                select(func.count())
                .select_from(Delivery)
                .where(col(Delivery.sent_at) >= utcnow() - timedelta(minutes=1))
            ).one()
            yield GaugeMetricFamily(
                "mailmag_send_rate_per_second",
                "Messages sent over the last minute, per second.",
                value=recent / 60.0,
            )


class SchedulerCollector(Collector):
    """Whether this process leads the scheduler, and how many sweeps it has run: across
    processes, the leaders should add up to one, and the leader's sweeps should grow."""

    def __init__(self, scheduler: Callable[[], Scheduler | None]) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        scheduler = self.scheduler()
        leading = scheduler is not None and scheduler.health().leading
        yield GaugeMetricFamily(
            "mailmag_scheduler_leader", "1 while this process leads the scheduler.", value=leading
        )
        yield CounterMetricFamily(
            "mailmag_scheduler_sweeps",
            "Sweeps for due issues this process has run as the leader.",
            value=scheduler.sweeps if scheduler is not None else 0,
        )


class Metrics:
    def __init__(
        self, engine: Engine, scheduler: Callable[[], Scheduler | None] = lambda: None
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(engine))
        self.registry.register(SchedulerCollector(scheduler))
        self.optin = Counter(
            "mailmag_optin_events",
            "Sign-ups, confirmations and unsubscribes.",
            ["event", "channel"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "mailmag_http_request_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def count(self, event: str, channel: str) -> None:
        self.optin.labels(event, channel).inc()


class MetricsMiddleware:
    """Times each request into ``Metrics.requests``: a plain ASGI middleware, without the
    extra task and body streaming of Starlette's ``BaseHTTPMiddleware``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_class = "5xx"

        async def watch(message: Message) -> None:
            nonlocal status_class
            if message["type"] == "http.response.start":
                status_class = f"{message['status'] // 100}xx"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, status_class).observe(
                time.perf_counter() - started
            )


def metrics_router(metrics: Metrics, token: str | None) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics")
    def scrape(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "metrics need a token")
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    return router
