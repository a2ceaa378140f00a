"""The application factory: the composition root that wires the two packages together.

``create_app`` builds the FastAPI app around a ``Runtime`` (settings, engine, templates).
Services that run beside the web app (``mailmag serve`` starts them) stop with its lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from subscriptions.db import make_engine
from subscriptions.routes import captured, health
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    runtime = Runtime(settings=settings, engine=engine or make_engine(settings.sqlalchemy_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runtime.stop_services()

    app = FastAPI(
        title="mailmag",
        summary="E-mail magazines with provable consent.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.include_router(health.router)
    if settings.captures_mail:
        app.include_router(captured.router)
    return app
