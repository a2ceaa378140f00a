"""How the routes use the database, checked over every route of the app.

A coroutine route runs on the event loop: a session of its own (``SessionDep``) would run
its queries there, blocking every other request, and keep its transaction (on SQLite, a
write lock) open across the route's ``await``s. So a coroutine route never takes one; its
database work goes through ``run_in_threadpool``. The engine itself reports any connection
taken on the loop's thread (``db.BlockingDatabaseCall``, an error in this suite).
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Iterator, Sequence

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.routing import BaseRoute

from subscriptions.db import BlockingDatabaseCall, guard_loop
from subscriptions.deps import get_session


def _sessions(dependant: Dependant) -> list[Dependant]:
    """The request sessions a route's dependencies ask for, however deep."""
    found = []
    for sub in dependant.dependencies:
        found += [sub] if sub.call is get_session else _sessions(sub)
    return found


def _takes_a_session(dependant: Dependant) -> bool:
    return bool(_sessions(dependant))


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every route, those of included routers too (FastAPI keeps an included router as one
    entry of ``app.routes``, holding its ``original_router``)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def test_no_coroutine_route_takes_a_request_session(app: FastAPI) -> None:
    offenders = [
        f"{sorted(route.methods or ())} {route.path}"
        for route in _api_routes(app.routes)
        if inspect.iscoroutinefunction(route.endpoint) and _takes_a_session(route.dependant)
    ]
    assert len(list(_api_routes(app.routes))) > 50  # the walk sees every route
    assert offenders == []


def test_a_session_of_a_plain_route_ends_before_its_answer_is_sent(app: FastAPI) -> None:
    scopes = {
        session.scope for route in _api_routes(app.routes) for session in _sessions(route.dependant)
    }
    assert scopes == {"function"}


async def _on_the_loop(engine: Engine, guarded: bool) -> None:
    from subscriptions import schema

    if guarded:
        guard_loop(asyncio.get_running_loop())  # as the app's start-up does
    schema.revision_state(engine)  # mailmag's own code, called on the loop's thread


def test_the_engine_reports_a_connection_taken_on_the_event_loop(engine: Engine) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(_on_the_loop(engine, guarded=False))  # not mailmag's loop: nothing said
        asyncio.run(_on_the_loop(engine, guarded=True))
    assert [w.category for w in caught] == [BlockingDatabaseCall]
    assert "schema.py" in str(caught[0].message)
    # A worker thread is where such work belongs: nothing is said there.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
