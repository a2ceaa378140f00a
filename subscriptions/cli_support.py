"""What every command of the command line shares: the consoles, failing with one line,
connecting to a database whose schema is current, building the runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.engine import Engine

from subscriptions import logs, schema
from subscriptions.db import check_connection, guard_loop, make_engine
from subscriptions.errors import ConfigurationError, StoreError
from subscriptions.runtime import Runtime, build_runtime
from subscriptions.settings import Settings

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop, as ``mailmag serve`` does under uvicorn, where it is installed
    (with uvicorn[standard] on Linux and macOS); on asyncio's own loop elsewhere."""

    async def guarded() -> T:
        guard_loop(asyncio.get_running_loop())  # no blocking database call on this loop
        return await main

    try:
        import uvloop
    except ImportError:
        return asyncio.run(guarded())
    return uvloop.run(guarded())


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"mailmag: {message}", highlight=False, markup=False)
    raise typer.Exit(code)


def connect(settings: Settings) -> Engine:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        check_connection(engine)
    except StoreError as exc:
        raise ConfigurationError(f"MAILMAG_DATABASE_URL: cannot connect: {exc}") from None
    return engine


def require_schema(engine: Engine) -> None:
    state = schema.revision_state(engine)
    if not state.at_head:
        raise StoreError(
            f"the database schema is at {state.current or 'nothing'}, not {state.head}: "
            "run `mailmag migrate` first"
        )


def store_for(settings: Settings) -> Engine:
    """The engine of a reachable database whose schema is current."""
    engine = connect(settings)
    require_schema(engine)
    return engine


def runtime_for(settings: Settings) -> Runtime:
    engine = connect(settings)
    require_schema(engine)
    return build_runtime(settings, engine)


def start_logging(settings: Settings) -> None:
    logs.configure(
        fmt=settings.log_format,
        level=settings.log_level,
        personal_data=settings.log_personal_data,
    )
