"""Logging in and out, one's own account, and (for admins) the staff accounts.

Login is a password, then a TOTP code when the account has one; an admin without one must
enrol it before anything else. The session cookie is replaced once the second factor passes,
so a cookie seen before login is worth nothing after. The login form's CSRF token is a
double-submit cookie (there is no session yet); every later form carries the session's.
Failed logins are limited per address and per client, and audited like successful ones.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import update
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.columns import RowId
from subscriptions import audit
from subscriptions import staff as accounts
from subscriptions.access import CurrentContext, StaffContext
from subscriptions.auth import issue_token
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep
from subscriptions.errors import AlreadyExists, InvalidInput
from subscriptions.models import StaffRole, StaffSession, StaffToken, StaffUser, StaffUserCreate
from subscriptions.routes.admin_common import actor_of, render, source_of
from subscriptions.runtime import Runtime

router = APIRouter(prefix="/admin", tags=["admin: accounts"])

LOGIN_COOKIE = "mm_login"

Text = Annotated[str, Form(max_length=1024)]
Code = Annotated[str, Form(max_length=16)]
Next = Annotated[str, Form(max_length=2000)]


def _safe_next(target: str | None) -> str:
    """Only a path of the admin UI itself (no scheme, host or //)."""
    if target and target.startswith("/admin") and "//" not in target and "\\" not in target:
        return target
    return "/admin"


def _set_session_cookie(runtime: Runtime, response: Response, token: str) -> None:
    response.set_cookie(
        accounts.SESSION_COOKIE,
        token,
        max_age=int(accounts.SESSION_MAX.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=runtime.settings.secure_cookies,
        path="/",
    )


def _trust_device(runtime: Runtime, response: Response, address: str) -> None:
    """Mark the client as one the account logged in from (``LoginGuard``): sent only to the
    login form, so it travels nowhere else."""
    response.set_cookie(
        accounts.DEVICE_COOKIE,
        runtime.login_guard.device_cookie(address),
        max_age=accounts.DEVICE_DAYS * 86400,
        httponly=True,
        samesite="strict",
        secure=runtime.settings.secure_cookies,
        path="/admin/login",
    )


def _login_form(
    request: Request, runtime: Runtime, target: str, error: str = "", code: int = 200
) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "admin/login.html",
        {"login_csrf": token, "next": target, "error": error},
        status_code=code,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=runtime.settings.secure_cookies,
        path="/admin",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request,
    runtime: RuntimeDep,
    next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> Response:
    return _login_form(request, runtime, _safe_next(next_))


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    runtime: RuntimeDep,
    email: Annotated[str, Form(max_length=320)],
    password: Text,
    csrf: Annotated[str, Form(max_length=100)],
    next_: Annotated[str, Form(alias="next", max_length=2000)] = "/admin",
) -> Response:
    target = _safe_next(next_)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf.encode()):
        return _login_form(request, runtime, target, "The form expired; please try again.", 403)
    address = accounts.normalise_staff_email(email)
    device = request.cookies.get(accounts.DEVICE_COOKIE, "")
    wait = runtime.login_guard.refusal(address, source_of(request), device)
    if wait is not None:
        refused = _login_form(request, runtime, target, "Too many attempts; wait 15 minutes.", 429)
        refused.headers["Retry-After"] = str(max(1, int(wait)))
        return refused
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = accounts.authenticate(session, address, password)
        if user is None:
            audit.record(
                session,
                audit.Actor(f"login:{address[:150]}", source_of(request)),
                "staff.login_failed",
            )
            session.commit()
            return _login_form(request, runtime, target, "Wrong address or password.", 401)
        complete = not accounts.needs_second_factor(user)
        _found, token = accounts.open_session(
            session,
            user,
            second_factor=complete,
            source=source_of(request),
            user_agent=request.headers.get("user-agent", ""),
        )
        if complete:
            audit.record(session, actor_of(user, request), "staff.login")
        session.commit()
    if complete:
        where = target
    elif user.totp_secret is not None:
        where = f"/admin/login/totp?next={quote(target, safe='/')}"
    else:
        where = "/admin/login/enrol"
    response = RedirectResponse(where, status_code=303)
    _set_session_cookie(runtime, response, token)
    response.delete_cookie(LOGIN_COOKIE, path="/admin")
    if complete:
        _trust_device(runtime, response, address)
    return response


def _elevate(
    request: Request, runtime: Runtime, session: Session, staff: StaffContext, target: str
) -> Response:
    """Replace the half-way session with a full one."""
    assert staff.session is not None
    accounts.end_session(session, staff.session)
    _found, token = accounts.open_session(
        session,
        staff.user,
        second_factor=True,
        source=source_of(request),
        user_agent=request.headers.get("user-agent", ""),
    )
    audit.record(session, actor_of(staff.user, request), "staff.login", detail={"totp": True})
    session.commit()
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(runtime, response, token)
    _trust_device(runtime, response, staff.user.email)
    return response


@router.get("/login/totp", response_class=HTMLResponse)
def totp_page(
    request: Request,
    staff: CurrentContext,
    next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> Response:
    return render(request, "admin/totp.html", {"next": _safe_next(next_), "error": ""}, staff=staff)


def _code_refused(
    request: Request, runtime: Runtime, session: Session, staff: StaffContext, page: str, **ctx: str
) -> Response:
    """Count a wrong code; after ``MAX_CODE_TRIES`` the half-way session ends."""
    assert staff.session is not None
    audit.record(session, actor_of(staff.user, request), "staff.totp_failed")
    if runtime.login_guard.wrong_codes.check(str(staff.session.id)) is not None:
        accounts.end_session(session, staff.session)
        session.commit()
        return _login_form(request, runtime, "/admin", "Too many wrong codes; log in again.", 401)
    session.commit()
    return render(
        request,
        page,
        {**ctx, "error": "That code is not right (or was used already)."},
        staff=staff,
        status_code=401,
    )


@router.post("/login/totp", response_class=HTMLResponse)
def totp_submit(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, code: Code, next_: Next = ""
) -> Response:
    target = _safe_next(next_)
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        if not accounts.check_code(session, user, code, runtime.secret_box()):
            return _code_refused(request, runtime, session, staff, "admin/totp.html", next=target)
        return _elevate(request, runtime, session, staff, target)


def _enrol_page(
    request: Request, staff: StaffContext, seed: str | None, action: str, error: str = ""
) -> Response:
    enrolment = accounts.new_enrolment(staff.user.email, seed)
    return render(
        request,
        "admin/enrol.html",
        {"enrolment": enrolment, "action": action, "error": error},
        staff=staff,
        status_code=401 if error else 200,
    )


@router.get("/login/enrol", response_class=HTMLResponse)
def enrol_page(request: Request, staff: CurrentContext) -> Response:
    return _enrol_page(request, staff, None, "/admin/login/enrol")


Seed = Annotated[str, Form(min_length=16, max_length=64, pattern=r"^[A-Z2-7]+$")]


@router.post("/login/enrol", response_class=HTMLResponse)
def enrol_submit(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, seed: Seed, code: Code
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        if not accounts.enrol(session, user, seed, code, runtime.secret_box()):
            session.rollback()
            return _enrol_page(
                request, staff, seed, "/admin/login/enrol", "That code is not right."
            )
        audit.record(session, actor_of(user, request), "staff.totp_enrolled")
        return _elevate(request, runtime, session, staff, "/admin")


@router.post("/logout")
def logout(runtime: RuntimeDep, staff: CurrentContext) -> Response:
    response = RedirectResponse("/admin/login", status_code=303)
    if staff.session is not None:
        with Session(for_writing(runtime.engine)) as session:
            accounts.end_session(session, staff.session)
            session.commit()
    response.delete_cookie(accounts.SESSION_COOKIE, path="/")
    return response


# --- one's own account --------------------------------------------------------------------------


def _account_page(
    request: Request,
    runtime: Runtime,
    staff: StaffContext,
    *,
    message: str = "",
    error: str = "",
    new_token: str = "",
    code: int = 200,
) -> Response:
    with Session(runtime.engine) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        tokens = session.exec(
            select(StaffToken)
            .where(StaffToken.staff_id == user.id, col(StaffToken.revoked_at).is_(None))
            .order_by(col(StaffToken.id))
        ).all()
        sessions = accounts.sessions_of(session, user)
    return render(
        request,
        "admin/account.html",
        {
            "user": user,
            "tokens": tokens,
            "sessions": sessions,
            "current_session": staff.session.id if staff.session else None,
            "enrolment": None if user.totp_secret else accounts.new_enrolment(user.email),
            "message": message,
            "error": error,
            "new_token": new_token,
            "now": utcnow(),
        },
        staff=staff,
        status_code=code,
    )


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    return _account_page(request, runtime, staff)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    current: Text,
    new: Text,
    repeat: Text,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        if not accounts.verify_password(user, current):
            return _account_page(
                request, runtime, staff, error="The current password is wrong.", code=400
            )
        if new != repeat:
            return _account_page(
                request, runtime, staff, error="The new passwords differ.", code=400
            )
        try:
            accounts.set_password(session, user, new)
        except InvalidInput as exc:
            return _account_page(request, runtime, staff, error=exc.message, code=400)
        audit.record(session, actor_of(user, request), "staff.password_changed")
        session.commit()
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(accounts.SESSION_COOKIE, path="/")
    return response


@router.post("/account/totp", response_class=HTMLResponse)
def account_totp(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, seed: Seed, code: Code
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        if not accounts.enrol(session, user, seed, code, runtime.secret_box()):
            session.rollback()
            return _account_page(request, runtime, staff, error="That code is not right.", code=400)
        audit.record(session, actor_of(user, request), "staff.totp_enrolled")
        session.commit()
    return _account_page(request, runtime, staff, message="Two-factor login is on.")


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    label: Annotated[str, Form(min_length=1, max_length=100)],
    days: Annotated[int, Form(ge=1, le=365)] = 90,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff.user.id)
        assert user is not None
        token = issue_token(session, user, label=label, expires_at=utcnow() + timedelta(days=days))
        audit.record(session, actor_of(user, request), "staff.token_created", target=label)
        session.commit()
    return _account_page(request, runtime, staff, new_token=token)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, token_id: RowId
) -> Response:
    with Session(for_writing(runtime.engine)) as session:
        session.execute(
            update(StaffToken)
            .where(
                col(StaffToken.id) == token_id,
                col(StaffToken.staff_id) == staff.user.id,
                col(StaffToken.revoked_at).is_(None),
            )
            .values(revoked_at=utcnow())
        )
        audit.record(
            session, actor_of(staff.user, request), "staff.token_revoked", target=str(token_id)
        )
        session.commit()
    return RedirectResponse("/admin/account", status_code=303)


@router.post("/account/sessions/{session_id}/end")
def end_own_session(runtime: RuntimeDep, staff: CurrentContext, session_id: RowId) -> Response:
    with Session(for_writing(runtime.engine)) as session:
        found = session.get(StaffSession, session_id)
        if found is None or found.staff_id != staff.user.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such session")
        accounts.end_session(session, found)
        session.commit()
    return RedirectResponse("/admin/account", status_code=303)


# --- staff accounts (admins) --------------------------------------------------------------------


def _staff_page(
    request: Request, runtime: Runtime, staff: StaffContext, error: str = "", code: int = 200
) -> Response:
    with Session(runtime.engine) as session:
        people = session.exec(select(StaffUser).order_by(col(StaffUser.email))).all()
    return render(
        request,
        "admin/staff.html",
        {"people": people, "roles": list(StaffRole), "error": error},
        staff=staff,
        status_code=code,
    )


@router.get("/staff", response_class=HTMLResponse)
def staff_list(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    return _staff_page(request, runtime, staff)


@router.post("/staff", response_class=HTMLResponse)
def staff_create(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    email: Annotated[str, Form(max_length=320)],
    role: Annotated[StaffRole, Form()],
    password: Text,
    display_name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    try:
        data = StaffUserCreate(email=email, display_name=display_name, role=role, password=password)
    except ValueError:
        return _staff_page(request, runtime, staff, "A password has at least 12 characters.", 400)
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        try:
            user = accounts.create_staff_user(session=session, data=data)
        except AlreadyExists as exc:
            return _staff_page(request, runtime, staff, str(exc), 409)
        audit.record(
            session,
            actor_of(staff.user, request),
            "staff.account_created",
            target=f"staff:{user.id} {user.email}",
            detail={"role": role.value},
        )
        session.commit()
    return RedirectResponse("/admin/staff", status_code=303)


@router.post("/staff/{staff_id}", response_class=HTMLResponse)
def staff_change(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    staff_id: RowId,
    role: Annotated[StaffRole, Form()],
    active: Annotated[bool, Form()] = False,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        user = session.get(StaffUser, staff_id)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such account")
        if user.id == staff.user.id and (role is not StaffRole.admin or not active):
            return _staff_page(
                request, runtime, staff, "You cannot demote or deactivate yourself.", 409
            )
        before = {"role": user.role.value, "active": user.active}
        if user.role is not role:
            user.role = role
            accounts.end_sessions(session, user)  # the new role applies from the next login
        if user.active and not active:
            accounts.deactivate(session, user)
        user.active = active
        session.add(user)
        audit.record(
            session,
            actor_of(staff.user, request),
            "staff.role_changed",
            target=f"staff:{user.id} {user.email}",
            detail={"before": before, "after": {"role": role.value, "active": active}},
        )
        session.commit()
    return RedirectResponse("/admin/staff", status_code=303)
