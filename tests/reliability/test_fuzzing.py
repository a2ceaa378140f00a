"""API fuzzing: schemathesis generates requests from mailmag's own OpenAPI spec, for every
operation, with data that fits the schema (positive) and data that breaks it (negative),
sent anonymously and with the credential the access table asks for.

Bars: 0 server errors; 0 responses that break the documented schema; 0 requests accepted
(2xx, or a redirect other than to the login page) without the right credential.

Each operation gets fresh staff members and tokens (a fuzzed call may revoke a token or
deactivate an account; the next operation must not inherit that).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailer.clock import utcnow
from subscriptions.access import rule_for
from subscriptions.auth import issue_party_credential, issue_token
from subscriptions.db import for_writing
from subscriptions.models import StaffRole, StaffUser
from tests.reliability.conftest import record, size

CASES = size(2_000, 50_000)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.fixture
def fuzzed(locked_app: FastAPI) -> tuple[FastAPI, TestClient]:
    """The app with every door locked, started; its server errors come back as 500s to
    count, not as exceptions."""
    return locked_app, TestClient(locked_app, raise_server_exceptions=False)


def credential_for(engine: Engine, kind: str, roles: frozenset[StaffRole], label: str) -> str:
    """A bearer credential that the rule ``kind`` admits (staff of the first role, or a
    pulling processor)."""
    with Session(for_writing(engine)) as session:
        if kind == "processor":
            _found, token = issue_party_credential(
                session, "sakura-asia", "processor", expires_at=utcnow() + timedelta(days=1)
            )
        else:
            role = sorted(roles)[0]
            user = StaffUser(email=f"fuzz-{label}@staff.example", role=role, password_hash="x")
            session.add(user)
            session.flush()
            token = issue_token(session, user, label="fuzz")
        session.commit()
    return token


def accepted_without_auth(status: int, location: str) -> bool:
    if 200 <= status < 300:
        return True
    return 300 <= status < 400 and not location.startswith("/admin/login")


class Fuzzer:
    def __init__(self, client: TestClient, per_operation: int) -> None:
        self.client = client
        self.per_operation = per_operation
        self.sent = 0
        self.server_errors: list[str] = []
        self.schema_breaks: list[str] = []
        self.open_doors: list[str] = []
        self.nothing_to_break = 0

    def fuzz(self, operation: Any, mode: GenerationMode, token: str | None, guarded: bool) -> None:
        """``per_operation`` generated calls of one operation, each signed or anonymous."""
        where = f"{operation.method.upper()} {operation.path} ({mode.value}"

        @settings(
            max_examples=self.per_operation,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), signed=st.booleans())
        def attempt(case: Any, signed: bool) -> None:
            headers = {}
            if signed and token is not None:
                headers["Authorization"] = f"Bearer {token}"
            elif case.headers:  # anonymous: whatever credential the generator made goes
                case.headers.pop("Authorization", None)
            # through the test's own client: the app runs once, its lifespan is not re-entered
            sent = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            self.client.cookies.clear()
            for key, value in (sent.get("cookies") or {}).items():
                self.client.cookies.set(key, str(value))
            form = sent.get("data")
            if isinstance(form, str | bytes):  # a raw (negative) body rather than fields
                sent["content"], form = form, None
            response = self.client.request(
                sent["method"],
                sent["url"],
                params=sent.get("params"),
                headers=sent.get("headers"),
                content=sent.get("content"),
                json=sent.get("json"),
                data=form,
                files=sent.get("files"),
                follow_redirects=False,
            )
            self.sent += 1
            label = f"{where}, {'signed' if headers else 'anonymous'})"
            if response.status_code >= 500:
                self.server_errors.append(f"{label}: {response.status_code} {response.text[:200]}")
            location = str(response.headers.get("location", ""))
            if guarded and not headers and accepted_without_auth(response.status_code, location):
                self.open_doors.append(f"{label}: {response.status_code}")
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except (AssertionError, FailureGroup) as exc:
                self.schema_breaks.append(f"{label}: {str(exc)[:300]}")

        try:
            attempt()
        except Unsatisfiable:  # nothing to break: an operation without any input
            self.nothing_to_break += 1


def test_fuzzing_finds_no_server_error_schema_break_or_open_door(
    fuzzed: tuple[FastAPI, TestClient], engine: Engine
) -> None:
    app, client = fuzzed
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the spec does not load: {result}"
        operations.append(result.ok())
    # operations with few distinct inputs yield fewer examples: aim above the share
    fuzzer = Fuzzer(client, math.ceil(1.5 * CASES / (len(operations) * len(MODES))))
    for index, operation in enumerate(operations):
        rule = rule_for(operation.method.upper(), operation.path)
        assert rule is not None, f"{operation.method} {operation.path} is not in the table"
        guarded = rule.kind in ("staff", "processor", "second_factor", "metrics", "webhook")
        token = None
        if rule.kind in ("staff", "processor"):
            token = credential_for(engine, rule.kind, rule.roles, str(index))
        for mode in MODES:
            fuzzer.fuzz(operation, mode, token, guarded)
    name = f"API fuzzing (schemathesis) [{engine.dialect.name}]"
    record(name, "cases sent", fuzzer.sent, f">= {CASES}", fuzzer.sent >= CASES)
    record(name, "operations", len(operations), "all in the spec", True)
    record(name, "server errors", len(fuzzer.server_errors), "0", not fuzzer.server_errors)
    breaks = fuzzer.schema_breaks
    record(name, "responses breaking the schema", len(breaks), "0", not breaks)
    doors = fuzzer.open_doors
    record(name, "accepted without the right auth", len(doors), "0", not doors)
    assert fuzzer.server_errors == [], "\n".join(fuzzer.server_errors[:20])
    assert breaks == [], "\n".join(breaks[:20])
    assert doors == [], "\n".join(doors[:20])
    assert fuzzer.sent >= CASES
