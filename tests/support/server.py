"""The app served over real HTTP: uvicorn in a thread (browser and load tests), or
``mailmag serve`` in a process of its own (the command as an operator runs it)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import uvicorn
from fastapi import FastAPI

from mailer.capture import LOOPBACK, free_port
from subscriptions import edge


@contextmanager
def serving(app: FastAPI, port: int | None = None, *, access_log: bool = False) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields the base URL. With
    ``access_log``, uvicorn logs every request through the root logger, as ``mailmag serve``
    has it (no logging config of its own)."""
    port = port or free_port()
    options = edge.uvicorn_options()  # as `mailmag serve` runs it
    config = uvicorn.Config(
        app,
        host=LOOPBACK,
        port=port,
        log_level="info" if access_log else "warning",
        log_config=None if access_log else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def mailmag_serve(
    mailmag: str, cwd: Path, env: dict[str, str], timeout: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    """``mailmag serve`` (the executable ``mailmag``) in ``cwd`` with exactly ``env``, from
    when it answers /readyz until the block ends. Its output goes to ``cwd/serve.log``."""
    log_path = cwd / "serve.log"
    log = log_path.open("w")  # a file, not a pipe: a full pipe would block it
    process = subprocess.Popen(
        [mailmag, "serve"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://{LOOPBACK}:{env['MAILMAG_HTTP_PORT']}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailmag serve did not become ready: {log_path.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()
