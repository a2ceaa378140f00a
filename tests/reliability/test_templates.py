"""Template injection: known Jinja2 sandbox escapes and resource bombs (every way to build a
large value that the sandbox bounds, from tests/mailer/test_templating.py) go through save,
preview and send; every one is refused, and a hostile render stops within 1 s and 64 MB.

Memory is Python's own allocation peak during an attempt (tracemalloc), time the wall clock
of the whole request, measured on an attempt of its own: tracemalloc slows Python several
times over. "Send" takes a hostile body written straight into the store (past the save
check, as a tampered row would be) and asks to send it now.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from functools import partial

import httpx2 as httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.models import Issue, IssueStatus
from subscriptions.db import for_writing
from subscriptions.models import StaffRole
from tests.mailer.test_api import token_for, weekly_with_readers
from tests.mailer.test_templating import BOMBS, HOSTILE
from tests.reliability.conftest import record

MAX_SECONDS = 1.0
MAX_BYTES = 64 * 1024 * 1024
EXTRA = [  # bombs that grow without a * or ** the sandbox counts
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}"
    "{{ d('x', 60) }}",
    "{% macro d(s, n) %}{% if n %}{{ d(s + s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}"
    "{{ d('x', 60) }}",
    "{{ ('x' * 99999)|join('x' * 99999) }}",
    "{{ ('x' * 99999)|indent(10**6, true) }}",
    "{{ '%s'|format('x') }}",
    "{{ ('x' * 99999)|replace('x', 'x' * 99999) }}",
    "{{ 'x'|center(10**8) }}",
    "{{ ('%0' ~ 10**8 ~ 'd') % 1 }}",
    "{{ (magazine.title * 99999)|wordwrap(1) }}",
    "{% for a in 'x'*99999 %}{% for b in 'x'*99999 %}{{ a }}{% endfor %}{% endfor %}",
]
CORPUS = HOSTILE + [source for source, _reason in BOMBS] + EXTRA


def measured(call: Callable[[], httpx.Response]) -> tuple[int, float, int]:
    """The answer's status, the request's wall clock, and, from a second identical
    request under tracemalloc (which slows Python several times over), its memory peak."""
    started = time.perf_counter()
    code = call().status_code
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        again = call().status_code
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return code if code == again else -1, elapsed, peak


def attempts(
    client: TestClient, headers: dict[str, str], magazine_id: int, issue_id: int, source: str
) -> dict[str, Callable[[], httpx.Response]]:
    body = {"magazine_id": magazine_id, "subject": "S", "html_body": source}
    return {
        "save": partial(client.post, "/api/v1/issues", json=body, headers=headers),
        "preview": partial(client.post, "/api/v1/issues/preview", json=body, headers=headers),
        "send": partial(client.post, f"/api/v1/issues/{issue_id}/send-now", headers=headers),
    }


def test_hostile_templates_are_refused_at_save_preview_and_send(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    magazine_id = weekly_with_readers(app, engine, 2)
    marketer = {"Authorization": f"Bearer {token_for(engine, StaffRole.marketer)}"}
    # the first request warms the app (imports, compiled pages, connections): not a render
    warm = client.post(
        "/api/v1/issues/preview",
        json={
            "magazine_id": magazine_id,
            "subject": "S",
            "html_body": "<p>{{ subscriber.name }}</p>",
        },
        headers=marketer,
    )
    assert warm.status_code == 200, warm.text
    accepted: list[str] = []
    slowest, largest = 0.0, 0
    slowest_step = ""
    for source in CORPUS:
        with Session(for_writing(engine), expire_on_commit=False) as session:
            tampered = Issue(magazine_id=magazine_id, subject="S", html_body=source)
            session.add(tampered)
            session.commit()
        assert tampered.id is not None
        steps = attempts(client, marketer, magazine_id, tampered.id, source)
        for step, call in steps.items():
            code, elapsed, peak = measured(call)
            if elapsed > slowest:
                slowest, slowest_step = elapsed, f"{step}: {source[:60]}"
            largest = max(largest, peak)

            if code != 422:
                accepted.append(f"{step} {code}: {source[:60]}")
        with Session(engine) as session:
            found = session.get(Issue, tampered.id)
            assert found is not None
            if found.status is not IssueStatus.draft:
                accepted.append(f"send started: {source[:60]}")
    name = f"template injection [{engine.dialect.name}]"
    record(name, "hostile templates x (save, preview, send)", f"{len(CORPUS)} x 3", "all", True)
    record(name, "accepted", len(accepted), "0", not accepted)
    record(name, "slowest refusal (s)", round(slowest, 3), "<= 1", slowest <= MAX_SECONDS)
    megabytes = round(largest / 2**20, 1)
    record(name, "largest allocation peak (MB)", megabytes, "<= 64", largest <= MAX_BYTES)
    assert accepted == []
    assert slowest <= MAX_SECONDS, slowest_step
    assert largest <= MAX_BYTES
