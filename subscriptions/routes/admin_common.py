"""What every admin page shares: rendering with the staff member, CSRF token and menu, the
security headers, and the audit actor of a request.

Admin pages run no inline script: their Content-Security-Policy allows scripts from the app
itself only (``/admin/static/admin.js``), so a stored payload that slipped past escaping still
could not run. Issue previews are shown in sandboxed frames without scripts.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError

from mailer.api import Operator
from subscriptions.access import StaffContext, current_context, rule_for
from subscriptions.audit import Actor
from subscriptions.deps import get_runtime
from subscriptions.models import StaffUser
from subscriptions.security_headers import ADMIN

CSP = ADMIN  # subscriptions/security_headers.py says why each directive is what it is

# The menu; an entry shows when the access table lets the role open it.
MENU = (
    ("/admin", "Dashboard"),
    ("/admin/issues", "Issues"),
    ("/admin/subscribers", "Subscribers"),
    ("/admin/requests", "Requests"),
    ("/admin/transfers", "Transfers"),
    ("/admin/registries", "Registries"),
    ("/admin/audit", "Audit log"),
    ("/admin/staff", "Staff"),
    ("/admin/account", "Account"),
)


def menu_for(user: StaffUser) -> list[tuple[str, str]]:
    return [
        (path, label)
        for path, label in MENU
        if (rule := rule_for("GET", path)) is not None
        and (rule.kind != "staff" or rule.admits(user.role))
    ]


def secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    staff: StaffContext | None = None,
    status_code: int = 200,
) -> Response:
    """An admin page; with ``staff``, the menu and the session's CSRF token for its forms."""
    values: dict[str, Any] = {"me": None, "csrf": "", "menu": [], **context}
    if staff is not None:
        values["me"] = staff.user
        values["menu"] = menu_for(staff.user)
        values["csrf"] = staff.session.csrf_token if staff.session is not None else ""
    response = get_runtime(request).templates.TemplateResponse(
        request, name, values, status_code=status_code
    )
    return secure(response)


def invalid_page(request: Request, error: RequestValidationError) -> Response | None:
    """What a browser gets for an admin page or form asked for with a value it cannot take
    (a missing or malformed parameter, a field too short): a page that names each problem,
    not FastAPI's JSON. None for the API and for scripts (they ask for JSON)."""
    if not request.url.path.startswith("/admin") or "text/html" not in request.headers.get(
        "accept", ""
    ):
        return None
    problems = [
        (str(e["loc"][-1]) if e.get("loc") else "request", str(e.get("msg", "")))
        for e in error.errors()
    ]
    return render(request, "admin/invalid.html", {"problems": problems}, status_code=422)


def source_of(request: Request) -> str:
    return request.client.host if request.client else ""


def actor_of(user: StaffUser, request: Request) -> Actor:
    return Actor(f"staff:{user.id} {user.email}", source_of(request))


def operator_of(request: Request) -> Operator:
    """The staff member calling the marketing API, as its test sends record and count them
    (a FastAPI dependency)."""
    user = current_context(request).user
    actor = actor_of(user, request)
    return Operator(key=f"staff:{user.id}", name=actor.name, source=actor.source)
