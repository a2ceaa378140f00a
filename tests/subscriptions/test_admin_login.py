"""Staff login as a browser does it: password, TOTP, the session cookie, CSRF on every form,
logout, and every session ending when the password changes."""

from __future__ import annotations

import re

import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from subscriptions.models import AuditEvent, StaffRole, StaffUser
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from subscriptions.staff import DEVICE_COOKIE, SESSION_COOKIE
from tests.support.pages import hidden_fields
from tests.support.staff import PASSWORD, add_staff, csrf_of, fresh_code, login


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def actions(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEvent.action).order_by(col(AuditEvent.seq))).all())


def start_login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    fields = hidden_fields(client.get("/admin/login").text)
    answer = client.post(
        "/admin/login",
        data={"email": email, "password": password, **fields},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def test_pages_send_the_anonymous_to_the_login_and_the_api_answers_401(client: TestClient) -> None:
    page = client.get("/admin/issues", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/admin/login?next=%2Fadmin%2Fissues"
    assert client.get("/api/v1/issues").status_code == 401
    assert client.post("/admin/logout").status_code == 401


def test_a_marketer_with_totp_logs_in_with_password_and_code(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    email, seed = add_staff(engine, StaffRole.marketer, runtime_of(app).secret_box())
    assert seed is not None
    wrong = hidden_fields(client.get("/admin/login").text)
    refused = client.post("/admin/login", data={"email": email, "password": "nope" * 4, **wrong})
    assert refused.status_code == 401
    assert "Wrong address or password" in refused.text

    where = start_login(client, email)
    assert where.startswith("/admin/login/totp")
    assert client.cookies.get(DEVICE_COOKIE) is None  # the password alone proves no device
    # half-way: no page but the code page opens
    assert client.get("/admin", follow_redirects=False).status_code == 303
    page = client.get(where)
    fields = hidden_fields(page.text)
    bad = client.post("/admin/login/totp", data={**fields, "code": "000000"})
    assert bad.status_code == 401
    used: set[str] = set()
    code = fresh_code(seed, used)
    ok = client.post("/admin/login/totp", data={**fields, "code": code}, follow_redirects=False)
    assert ok.status_code == 303
    assert ok.headers["location"] == "/admin"
    device = next(c for c in ok.headers.get_list("set-cookie") if c.startswith(DEVICE_COOKIE + "="))
    assert all(part in device for part in ("HttpOnly", "SameSite=strict", "Path=/admin/login"))
    assert client.get("/admin").status_code == 200

    # the same code cannot log in a second time (a replayed code)
    other = TestClient(app)
    where = start_login(other, email)
    again = other.post(
        "/admin/login/totp", data={**hidden_fields(other.get(where).text), "code": code}
    )
    assert again.status_code == 401
    assert actions(engine).count("staff.login") == 1
    assert "staff.login_failed" in actions(engine)
    assert "staff.totp_failed" in actions(engine)


def test_an_admin_must_enrol_totp_before_anything_else(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    email, _seed = add_staff(engine, StaffRole.admin)
    assert start_login(client, email) == "/admin/login/enrol"
    assert client.get("/admin/staff", follow_redirects=False).status_code == 303
    page = client.get("/admin/login/enrol")
    assert "<svg" in page.text  # the QR code, inline
    fields = hidden_fields(page.text)
    seed = fields["seed"]
    assert client.post("/admin/login/enrol", data={**fields, "code": "123456"}).status_code == 401
    done = client.post(
        "/admin/login/enrol",
        data={**fields, "code": pyotp.TOTP(seed).now()},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert client.get("/admin/staff").status_code == 200
    with Session(engine) as session:
        user = session.exec(select(StaffUser).where(StaffUser.email == email)).one()
        assert user.totp_secret is not None
        assert seed not in user.totp_secret
    assert "staff.totp_enrolled" in actions(engine)


def test_forms_without_the_csrf_token_are_refused(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    email, seed = add_staff(engine, StaffRole.marketer, runtime_of(app).secret_box())
    csrf = login(client, email, seed)
    form = {"label": "ci", "days": "30"}
    assert client.post("/admin/account/tokens", data=form).status_code == 403
    assert client.post("/admin/account/tokens", data={**form, "csrf": "x" * 43}).status_code == 403
    foreign = client.post(
        "/admin/account/tokens",
        data={**form, "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    # the JSON API from a browser session needs the header too
    body = {"magazine_id": 1, "subject": "s", "html_body": "b"}
    assert client.post("/api/v1/issues/preview", json=body).status_code == 403
    made = client.post("/admin/account/tokens", data={**form, "csrf": csrf})
    assert made.status_code == 200
    token = re.search(r'<pre id="new-token">([^<]+)</pre>', made.text)
    assert token is not None
    # the new personal API token works on the JSON API, without any cookie or CSRF token
    api = TestClient(app)
    listed = api.get("/api/v1/issues", headers={"Authorization": f"Bearer {token.group(1)}"})
    assert listed.status_code == 200


def test_the_login_form_itself_needs_its_token(client: TestClient, engine: Engine) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer)
    answer = client.post(
        "/admin/login", data={"email": email, "password": PASSWORD, "csrf": "forged"}
    )
    assert answer.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_a_password_change_ends_every_session(app: FastAPI, engine: Engine) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer)
    first, second = TestClient(app), TestClient(app)
    csrf = login(first, email, None)
    login(second, email, None)
    changed = first.post(
        "/admin/account/password",
        data={
            "csrf": csrf,
            "current": PASSWORD,
            "new": "a new long password",
            "repeat": "a new long password",
        },
        follow_redirects=False,
    )
    assert changed.status_code == 303
    for browser in (first, second):
        assert browser.get("/admin", follow_redirects=False).status_code == 303
    login(first, email, None, password="a new long password")
    assert first.get("/admin").status_code == 200


def test_logout_ends_the_session(client: TestClient, engine: Engine) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer)
    csrf = login(client, email, None)
    cookie = client.cookies[SESSION_COOKIE]
    assert (
        client.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    )
    replay = TestClient(client.app)
    replay.cookies.set(SESSION_COOKIE, cookie)
    assert replay.get("/admin", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("https", [False, True])
def test_the_session_cookie_is_httponly_samesite_and_secure_over_https(
    settings: Settings, engine: Engine, https: bool
) -> None:
    from subscriptions.app import create_app

    base = "https://mail.example.com" if https else "http://testserver"
    app = create_app(settings.model_copy(update={"base_url": base}), engine=engine, delivery=False)
    email, _seed = add_staff(engine, StaffRole.viewer)
    with TestClient(app, base_url=base) as client:
        fields = hidden_fields(client.get("/admin/login").text)
        answer = client.post(
            "/admin/login",
            data={"email": email, "password": PASSWORD, **fields},
            follow_redirects=False,
        )
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert ("Secure" in cookie) is https


def attempt(client: TestClient, email: str, password: str = "wrong password!") -> int:
    fields = hidden_fields(client.get("/admin/login").text)
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, **fields},
        follow_redirects=False,
    ).status_code


def test_repeated_wrong_passwords_from_one_client_are_held_back(
    client: TestClient, engine: Engine
) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer, email="target@staff.example")
    codes = [attempt(client, email) for _ in range(12)]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]
    held = client.post("/admin/login", data={"email": email, "password": "x", "csrf": "x"})
    assert held.status_code in (403, 429)


def test_a_stranger_cannot_lock_the_owner_out_from_another_client(
    app: FastAPI, engine: Engine
) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer, email="target@staff.example")
    with TestClient(app, client=("198.51.100.9", 4444)) as stranger:
        codes = [attempt(stranger, email) for _ in range(12)]
    assert codes[10:] == [429, 429]  # the stranger is held back at that address
    with TestClient(app, client=("192.0.2.10", 5555)) as owner:
        assert attempt(owner, email, PASSWORD) == 303  # the owner is not


def test_one_client_trying_many_addresses_is_held_back(app: FastAPI, engine: Engine) -> None:
    owner_email, _seed = add_staff(engine, StaffRole.viewer, email="owner@staff.example")
    with TestClient(app, client=("198.51.100.9", 4444)) as sprayer:
        codes = [attempt(sprayer, f"guess{n}@staff.example") for n in range(32)]
        assert codes[:30] == [401] * 30
        assert codes[30:] == [429, 429]
        assert attempt(sprayer, owner_email, PASSWORD) == 429  # even with the right password
    with TestClient(app, client=("192.0.2.10", 5555)) as owner:
        assert attempt(owner, owner_email, PASSWORD) == 303


def test_guessing_one_address_from_many_clients_spares_the_owners_own_client(
    app: FastAPI, engine: Engine
) -> None:
    email, _seed = add_staff(engine, StaffRole.viewer, email="target@staff.example")
    owner = TestClient(app, client=("192.0.2.10", 5555))
    assert attempt(owner, email, PASSWORD) == 303  # once: the client is now the owner's
    assert owner.cookies.get(DEVICE_COOKIE) is not None
    owner.cookies.delete(SESSION_COOKIE)
    # a botnet: one try from each of 49 clients; with the owner's, 50 from strangers
    bots = [attempt(TestClient(app, client=(f"203.0.113.{n}", 4000 + n)), email) for n in range(49)]
    assert bots == [401] * 49
    stranger = TestClient(app, client=("198.51.100.77", 4444))
    assert attempt(stranger, email, PASSWORD) == 429  # strangers wait now
    assert attempt(owner, email, PASSWORD) == 303  # the owner's own client does not


def test_roles_and_deactivation_are_changed_by_admins_and_audited(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    box = runtime_of(app).secret_box()
    admin, seed = add_staff(engine, StaffRole.admin, box)
    viewer, _ = add_staff(engine, StaffRole.viewer)
    other = TestClient(app)
    login(other, viewer, None)
    csrf = login(client, admin, seed)
    with Session(engine) as session:
        target = session.exec(select(StaffUser).where(StaffUser.email == viewer)).one()
    changed = client.post(
        f"/admin/staff/{target.id}", data={"csrf": csrf, "role": "marketer", "active": "true"}
    )
    assert changed.status_code == 200
    assert other.get("/admin", follow_redirects=False).status_code == 303  # sessions ended
    with Session(engine) as session:
        assert session.get(StaffUser, target.id).role is StaffRole.marketer  # type: ignore[union-attr]
    client.post(f"/admin/staff/{target.id}", data={"csrf": csrf, "role": "marketer"})
    with Session(engine) as session:
        assert session.get(StaffUser, target.id).active is False  # type: ignore[union-attr]
    assert actions(engine).count("staff.role_changed") == 2
    assert csrf_of(client)
