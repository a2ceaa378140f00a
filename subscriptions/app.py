"""The application factory: the composition root that wires the two packages together.

``create_app`` builds the FastAPI app around a ``Runtime`` (settings, engine, services). Its
lifespan syncs the registry's magazines into the store and runs the system-mail outbox;
services that ``mailmag serve`` starts beside the web app stop with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from subscriptions import schema
from subscriptions.db import make_engine
from subscriptions.routes import captured, health, public
from subscriptions.runtime import build_runtime
from subscriptions.settings import Settings


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    runtime = build_runtime(settings, engine or make_engine(settings.sqlalchemy_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        with contextlib.suppress(SQLAlchemyError):  # /readyz reports an unusable database
            if schema.revision_state(runtime.engine).at_head:
                runtime.sync_magazines()
        await runtime.start_loops()
        try:
            yield
        finally:
            await runtime.stop_loops()
            runtime.stop_services()

    app = FastAPI(
        title="mailmag",
        summary="E-mail magazines with provable consent.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.include_router(health.router)
    app.include_router(public.router)
    app.include_router(public.api)
    if settings.captures_mail:
        app.include_router(captured.router)
    return app
