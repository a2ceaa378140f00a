"""Staff members for tests, and logging in as a browser would (forms, cookies, TOTP)."""

from __future__ import annotations

import re
import time

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from subscriptions import staff as accounts
from subscriptions.db import for_writing
from subscriptions.models import StaffRole, StaffUserCreate
from subscriptions.staff import SecretBox
from tests.support.pages import hidden_fields

PASSWORD = "correct horse battery staple"


def add_staff(
    engine: Engine, role: StaffRole, box: SecretBox | None = None, email: str | None = None
) -> tuple[str, str | None]:
    """A staff account in ``role``; with ``box``, TOTP on. Returns (address, TOTP seed)."""
    email = email or f"{role.value}@staff.example"
    seed = pyotp.random_base32() if box is not None else None
    with Session(for_writing(engine)) as session:
        user = accounts.create_staff_user(
            session=session, data=StaffUserCreate(email=email, role=role, password=PASSWORD)
        )
        if box is not None and seed is not None:
            user.totp_secret = box.seal(seed)
            session.add(user)
        session.commit()
    return email, seed


def fresh_code(seed: str, used: set[str] | None = None) -> str:
    """A current code; waits for the next step when this one was used already."""
    totp = pyotp.TOTP(seed)
    code = totp.now()
    while used is not None and code in used:
        time.sleep(0.5)
        code = totp.now()
    if used is not None:
        used.add(code)
    return code


def login(client: TestClient, email: str, seed: str | None, password: str = PASSWORD) -> str:
    """Log ``client`` in through the forms; returns the session's CSRF token."""
    form = client.get("/admin/login")
    fields = hidden_fields(form.text)
    answer = client.post(
        "/admin/login",
        data={"email": email, "password": password, **fields},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    if "/admin/login/totp" in answer.headers["location"]:
        assert seed is not None
        page = client.get(answer.headers["location"])
        done = client.post(
            "/admin/login/totp",
            data={**hidden_fields(page.text), "code": fresh_code(seed)},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    page = client.get("/admin/account")
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)
