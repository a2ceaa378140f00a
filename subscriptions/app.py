"""The application factory: the composition root that wires the two packages together.

``create_app`` builds the FastAPI app around a ``Runtime`` (settings, engine, services). Its
lifespan syncs the registry's magazines into the store and runs the system-mail outbox;
services that ``mailmag serve`` starts beside the web app stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mailer.api import MarketingServices, marketing_router
from mailer.verp import TEST_DELIVERY
from subscriptions import edge, schema
from subscriptions.access import LoginRequired, authorize, current_staff, login_redirect_target
from subscriptions.db import guard_loop, make_engine, outage_reason
from subscriptions.errors import BadToken, StoreError, TestLink
from subscriptions.metrics import Metrics, MetricsMiddleware, metrics_router
from subscriptions.routes import (
    admin,
    admin_auth,
    admin_privacy,
    assets,
    captured,
    contact,
    health,
    privacy,
    processor,
    public,
    webhook,
)
from subscriptions.routes.admin_common import invalid_page, operator_of
from subscriptions.runtime import build_runtime
from subscriptions.security_headers import SecurityHeaders
from subscriptions.settings import Settings
from subscriptions.testsends import StoreTestSends, TestSendLimits

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, *, engine: Engine | None = None, delivery: bool = True
) -> FastAPI:
    """The web app. With ``delivery`` (the default) the process also runs a delivery worker
    and competes to lead the scheduler, as ``mailmag serve`` does."""
    runtime = build_runtime(settings, engine or make_engine(settings.sqlalchemy_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        guard_loop(asyncio.get_running_loop())  # no blocking database call on this loop
        ready = False
        with contextlib.suppress(SQLAlchemyError):  # /readyz reports an unusable database
            ready = (await asyncio.to_thread(schema.revision_state, runtime.engine)).at_head
        runtime.readiness.watch()
        if ready:
            await asyncio.to_thread(runtime.sync_magazines)
            await runtime.start_loops(delivery=delivery)
        else:
            log.warning("the database is not ready: background work waits for a restart")
        try:
            yield
        finally:
            await runtime.stop_loops()
            await asyncio.to_thread(runtime.commits.close)  # its connection back, at once
            runtime.stop_services()
            runtime.readiness.unwatch()

    app = FastAPI(
        title="mailmag",
        summary="E-mail magazines with provable consent.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
        docs_url=None,  # served by routes/assets.py, from mailmag's own copy of Swagger UI
        redoc_url=None,
        # mailmag's own Prometheus metrics (/metrics) describe it; FastAPI's OpenTelemetry
        # hooks, with nothing to export to, would only cost every request a few lookups.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.runtime = runtime
    metrics = Metrics(runtime.engine, scheduler=lambda: runtime.scheduler)
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders, https=settings.secure_cookies)
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app.include_router(metrics_router(metrics, token))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DataError, _unstorable)
    for outage in STORE_OUTAGES:
        app.add_exception_handler(outage, _store_unavailable)
    app.add_exception_handler(BadToken, public.bad_link)
    app.add_exception_handler(TestLink, public.test_link)
    app.add_exception_handler(LoginRequired, _to_login)
    app.include_router(health.router)
    app.include_router(assets.router)
    app.include_router(public.router)
    app.include_router(public.api)
    app.include_router(webhook.router)
    app.include_router(processor.router)
    app.include_router(privacy.router)
    app.include_router(admin_auth.router)
    app.include_router(admin.router)
    app.include_router(admin_privacy.router)
    app.include_router(contact.router)
    app.include_router(
        marketing_router(
            current_staff,
            MarketingServices(
                engine=runtime.engine,
                audience=runtime.audience,
                preparer=runtime.preparer,
                transport=runtime.system_transport,  # test sends: system mail's client
                operator=operator_of,
                test_sends=StoreTestSends(
                    runtime.engine,
                    runtime.optin.hasher,
                    TestSendLimits(
                        settings.test_sends_per_staff_hour, settings.test_sends_per_issue_day
                    ),
                ),
                test_token=runtime.delivery_tokens.make(TEST_DELIVERY),
                on_started=runtime.nudge_worker,
            ),
        )
    )
    if settings.captures_mail:
        app.include_router(captured.router)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    edge.install(app, settings)  # last: the outermost layer
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The spec, saying what a 422 really carries: FastAPI documents only its list of field
    errors, while the routes' own refusals (a template the sandbox rejects, a field that
    cannot be exported) give one message."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        schemas = spec.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            detail = schemas["HTTPValidationError"]["properties"]["detail"]
            schemas["HTTPValidationError"]["properties"]["detail"] = {
                "anyOf": [detail, {"type": "string"}],
                "title": "Detail",
            }
        app.openapi_schema = spec
    return app.openapi_schema


async def _invalid_request(request: Request, error: Exception) -> Response:
    """FastAPI's own 422, except that what it echoes back is made writable first: a JSON
    body may hold "\\ud800", which decodes to a lone surrogate that the answer could not
    be encoded with (a 500 instead of the 422). A browser on an admin page gets a page."""
    assert isinstance(error, RequestValidationError)
    if (page := invalid_page(request, error)) is not None:
        return page
    return JSONResponse({"detail": _writable(jsonable_encoder(error.errors()))}, 422)


async def _unstorable(_request: Request, error: Exception) -> Response:
    """PostgreSQL stores no NUL character in text (SQLite does): a search or a value
    holding one is refused as the client's error, not answered with a 500. Any other
    data error is a fault of ours, and stays one."""
    assert isinstance(error, DataError)
    if "NUL" not in str(error.orig):
        raise error
    return JSONResponse({"detail": "text may not hold a NUL character"}, 422)


# What a database that is away, locked, full or read-only raises (``db.outage_reason`` tells
# them from a fault of ours): the request was fine and may be tried again, so the answer is
# 503 with Retry-After, not a bare 500.
STORE_OUTAGES: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout, StoreError)
RETRY_AFTER_SECONDS = 30
_JSON_PREFIXES = ("/api/", "/processor/", "/metrics")


def _store_unavailable(request: Request, error: Exception) -> Response:
    """The answer when the store fails a request: JSON for the APIs, a page for people,
    both saying to try again, with ``Retry-After``. The log line holds the database's
    reason only (the engine hides statements' parameters, which may be personal data)."""
    reason = outage_reason(error)
    if reason is None:
        raise error
    route = getattr(request.scope.get("route"), "path", request.url.path)
    log.error("the database failed %s %s: %s", request.method, route, reason)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"}
    if request.url.path.startswith(_JSON_PREFIXES):
        return JSONResponse(
            {"detail": "the service cannot use its database right now; try again shortly"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers=headers,
        )
    answer = public.unavailable(request)
    answer.headers.update(headers)
    return answer


def _writable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_writable(v) for v in value]
    if isinstance(value, dict):
        return {k: _writable(v) for k, v in value.items()}
    return value


def _to_login(_request: Request, error: Exception) -> Response:
    assert isinstance(error, LoginRequired)
    return RedirectResponse(login_redirect_target(error.target), status_code=303)
