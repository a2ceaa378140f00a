"""FastAPI dependencies as ``Annotated`` aliases: ``RuntimeDep``, ``SessionDep``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from subscriptions.db import for_writing
from subscriptions.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _runtime(request: Request) -> Runtime:
    """``get_runtime`` as a dependency: async, so FastAPI calls it on the event loop instead
    of sending it through a worker thread (a thread hop on every request that asks for it)."""
    return get_runtime(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(runtime: RuntimeDep, request: Request) -> Iterator[Session]:
    """A session for a plain (``def``) route, which FastAPI runs in a worker thread; requests
    that may write take SQLite's write lock at BEGIN. The session ends with the route
    function (``scope="function"``), before the answer is sent: FastAPI's default would keep
    its transaction, and SQLite's write lock, open while a slow client reads the answer.
    A coroutine route never takes it (``tests/subscriptions/test_routes.py`` checks): its
    database work goes through ``run_in_threadpool`` in a session of its own."""
    engine = runtime.engine
    if request.method not in READ_ONLY_METHODS:
        engine = for_writing(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
