"""Who may call which route: one table, enforced for every request by one dependency.

``TABLE`` maps ``"METHOD /path/template"`` to a ``Rule``. ``authorize`` (an app-wide
dependency) looks the matched route up and refuses what the rule does not allow; a route
missing from the table is refused to everyone (and ``tests/subscriptions/test_access.py``
fails on it). Rules:

- ``PUBLIC``: anyone (sign-up, health). ``LINK``: anyone holding one of the person's own
  link tokens in the path, a signed link that mailmag mailed to the person alone; the route
  checks the token. ``MESSAGE_LINK``: that, or the delivery token an issue's message carries
  (``mailer.verp``). A processor receives that token, and it sits in Return-Path,
  Message-ID and List-Unsubscribe, so every relay on the way sees it: it may unsubscribe
  (its job) and open the page that offers to mail the person a fresh preferences link, and
  nothing else. Every other link route refuses it before its body is read, so it never
  reads the person's data, changes it, or grants a consent in their name.
  ``PROCESSOR``, ``WEBHOOK``, ``METRICS``: a machine credential, provider signature or
  scraper token that the route checks itself.
- ``LOGIN``: the login pages. ``SECOND_FACTOR``: a session that passed the password but not
  yet the TOTP code (or must still enrol one).
- ``staff(roles)``: staff in one of ``roles``, with a personal API token (``Bearer mm_…``) or
  a browser session cookie. Cookie requests that may change state must carry the session's
  CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and, when the browser names
  one, an ``Origin`` that is the app's own.

Roles follow duties (segregation is deliberate): admins run accounts and registries but do
not write issues or browse subscribers; marketers see aggregates, never a person; privacy
officers see people and evidence; viewers read aggregates.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailer.verp import TEST_DELIVERY, TOKEN_LENGTH
from subscriptions import staff as accounts
from subscriptions.auth import staff_for_token
from subscriptions.deps import READ_ONLY_METHODS, get_runtime
from subscriptions.errors import BadToken, TestLink
from subscriptions.i18n import N_
from subscriptions.models import StaffRole, StaffSession, StaffUser
from subscriptions.subscribing import UnsubscribeLink
from subscriptions.tokens import Action


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    roles: frozenset[StaffRole] = frozenset()
    message_token: bool = False  # a link rule that also takes a message's delivery token

    def admits(self, role: StaffRole) -> bool:
        return role in self.roles


PUBLIC = Rule("public")
LINK = Rule("link")
MESSAGE_LINK = Rule("link", message_token=True)
PROCESSOR = Rule("processor")
WEBHOOK = Rule("webhook")
METRICS = Rule("metrics")
LOGIN = Rule("login")
SECOND_FACTOR = Rule("second_factor")


def staff(*roles: StaffRole) -> Rule:
    return Rule("staff", frozenset(roles))


A, M, P, V = StaffRole.admin, StaffRole.marketer, StaffRole.privacy_officer, StaffRole.viewer
ANY_STAFF = staff(A, M, P, V)
AGGREGATES = staff(A, M, P, V)
MARKETING = staff(M)
MARKETING_READ = staff(M, V, A)
PRIVACY = staff(P)
REGISTRIES = staff(A, P)
ACCOUNTS = staff(A)

TABLE: dict[str, Rule] = {
    # health and metrics
    "GET /healthz": PUBLIC,
    "GET /readyz": PUBLIC,
    "GET /metrics": METRICS,
    # the subscriber's pages and the public API
    "GET /": PUBLIC,
    "GET /subscribe": PUBLIC,
    "POST /subscribe": PUBLIC,
    "GET /contact": PUBLIC,
    "POST /contact": PUBLIC,
    "GET /api/v1/subscribe/form": PUBLIC,
    "POST /api/v1/subscribe": PUBLIC,
    "GET /confirm/{token}": LINK,
    "POST /confirm/{token}": LINK,
    "GET /preferences/{token}": MESSAGE_LINK,
    "POST /preferences/{token}/link": MESSAGE_LINK,
    "POST /preferences/{token}": LINK,
    "POST /preferences/{token}/export": LINK,
    "POST /preferences/{token}/erase": LINK,
    "POST /preferences/{token}/request": LINK,
    "GET /erase/{token}": LINK,
    "POST /erase/{token}": LINK,
    "GET /u/{token}": MESSAGE_LINK,
    "POST /u/{token}": MESSAGE_LINK,
    "GET /verify/{token}": LINK,
    "POST /verify/{token}": LINK,
    "GET /disclosure/{token}": LINK,
    "POST /disclosure/{token}": LINK,
    # machines
    "POST /api/v1/feedback/webhook": WEBHOOK,
    "POST /processor/v1/batches": PROCESSOR,
    "POST /processor/v1/outcomes": PROCESSOR,
    "GET /processor/v1/opt-outs": PROCESSOR,
    "POST /processor/v1/opt-outs/ack": PROCESSOR,
    # the staff JSON API
    "GET /api/v1/issues": MARKETING_READ,
    "POST /api/v1/issues": MARKETING,
    "GET /api/v1/issues/{issue_id}": MARKETING_READ,
    "PATCH /api/v1/issues/{issue_id}": MARKETING,
    "POST /api/v1/issues/preview": MARKETING,
    "POST /api/v1/issues/{issue_id}/preview": MARKETING,
    "POST /api/v1/issues/{issue_id}/test-send": MARKETING,
    "POST /api/v1/issues/{issue_id}/schedule": MARKETING,
    "POST /api/v1/issues/{issue_id}/unschedule": MARKETING,
    "POST /api/v1/issues/{issue_id}/send-now": MARKETING,
    "POST /api/v1/issues/{issue_id}/pause": MARKETING,
    "POST /api/v1/issues/{issue_id}/resume": MARKETING,
    "POST /api/v1/issues/{issue_id}/cancel": MARKETING,
    "GET /api/v1/issues/{issue_id}/status": MARKETING_READ,
    "GET /api/v1/privacy/magazines/{slug}/subscribers": PRIVACY,
    # the admin web UI: logging in
    "GET /admin/login": LOGIN,
    "POST /admin/login": LOGIN,
    "GET /admin/login/totp": SECOND_FACTOR,
    "POST /admin/login/totp": SECOND_FACTOR,
    "GET /admin/login/enrol": SECOND_FACTOR,
    "POST /admin/login/enrol": SECOND_FACTOR,
    "POST /admin/logout": ANY_STAFF,
    # one's own account
    "GET /admin/account": ANY_STAFF,
    "POST /admin/account/password": ANY_STAFF,
    "POST /admin/account/totp": ANY_STAFF,
    "POST /admin/account/tokens": ANY_STAFF,
    "POST /admin/account/tokens/{token_id}/revoke": ANY_STAFF,
    "POST /admin/account/sessions/{session_id}/end": ANY_STAFF,
    # aggregates
    "GET /admin": AGGREGATES,
    "GET /admin/progress": AGGREGATES,
    "GET /admin/issues": MARKETING_READ,
    "GET /admin/issues/{issue_id}/report": MARKETING_READ,
    # the issue editor (the page; it acts through the JSON API above)
    "GET /admin/issues/new": MARKETING,
    "GET /admin/issues/{issue_id}": MARKETING,
    # people and evidence
    "GET /admin/subscribers": PRIVACY,
    "GET /admin/subscribers/{subscriber_id}": PRIVACY,
    "POST /admin/subscribers/{subscriber_id}/correct": PRIVACY,
    "GET /admin/requests": PRIVACY,
    "POST /admin/requests": PRIVACY,
    "GET /admin/requests/{request_id}": PRIVACY,
    "POST /admin/requests/{request_id}/complete": PRIVACY,
    "POST /admin/requests/{request_id}/reject": PRIVACY,
    "POST /admin/requests/{request_id}/resend": PRIVACY,
    "GET /admin/transfers": PRIVACY,
    "GET /admin/audit": PRIVACY,
    "GET /admin/audit/export": PRIVACY,
    # registries
    "GET /admin/registries": REGISTRIES,
    "GET /admin/notices": REGISTRIES,
    # accounts
    "GET /admin/staff": ACCOUNTS,
    "POST /admin/staff": ACCOUNTS,
    "POST /admin/staff/{staff_id}": ACCOUNTS,
    "GET /admin/static/{name}": PUBLIC,
    # mailmag's own stylesheets and scripts, and the API's documentation page
    "GET /static/{name}": PUBLIC,
    "GET /static/{folder}/{name}": PUBLIC,
    "GET /docs": PUBLIC,
    # captured mail (only mounted in development)
    "GET /_mail": PUBLIC,
    "GET /_mail/{key}": PUBLIC,
    "GET /_mail/{key}/raw": PUBLIC,
    "GET /_mail/{key}/html": PUBLIC,
}


def rule_for(method: str, path: str) -> Rule | None:
    return TABLE.get(f"{'GET' if method == 'HEAD' else method} {path}")


@dataclass(frozen=True, slots=True)
class StaffContext:
    user: StaffUser
    session: StaffSession | None  # None when the request carries an API token


class LoginRequired(Exception):
    """An admin page was asked for without a session: the browser goes to the login page."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def _identify(request: Request, complete: bool) -> StaffContext | None:
    """The staff member behind the request's API token or session cookie; ``complete``
    asks for a session past its second factor, else for one half-way through login."""
    engine = get_runtime(request).engine
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    with Session(engine, expire_on_commit=False) as session:
        if complete and scheme.lower() == "bearer" and credential:
            user = staff_for_token(session, credential.strip())
            return None if user is None else StaffContext(user, None)
        cookie = request.cookies.get(accounts.SESSION_COOKIE)
        if not cookie:
            return None
        found = accounts.live_session(session, cookie)
    if found is None or found[0].second_factor != complete:
        return None
    return StaffContext(found[1], found[0])


async def _check_csrf(request: Request, expected: str) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != get_runtime(request).settings.origin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin requests are refused")
    given = request.headers.get("x-csrf-token", "")
    content_type = request.headers.get("content-type", "")
    if not given and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("csrf")
        given = value if isinstance(value, str) else ""
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or wrong")


LINK_ACTIONS = {
    "/confirm/": Action.confirm,
    "/preferences/": Action.preferences,
    "/erase/": Action.erase,
    "/u/": Action.unsubscribe,
    "/verify/": Action.verify,
    "/disclosure/": Action.disclosure,
}


def _check_link(request: Request, path: str, rule: Rule) -> None:
    """A link route's token must be genuine for the page's action (its expiry and subject
    are the route's to check); a forged one is refused before the body is even read, and so
    is a message's delivery token on a route whose rule does not take it. An unsubscribe
    link's check is all there is to it (no age applies), so its reading is kept for the
    route (``unsubscribe_link``) instead of being done twice."""
    token = str(request.path_params.get("token", ""))
    action = LINK_ACTIONS[path.split("{", 1)[0]]
    runtime = get_runtime(request)
    if len(token) == TOKEN_LENGTH and runtime.delivery_tokens.read(token) == TEST_DELIVERY:
        raise TestLink(action.value)  # from a test message: the page says so, nothing happens
    request.state.from_message = False
    if action is Action.unsubscribe:
        request.state.unsubscribe_link = runtime.optin.unsubscribe_link(token)
        request.state.from_message = request.state.unsubscribe_link.delivery_id is not None
        return
    if action is Action.preferences and len(token) == TOKEN_LENGTH:
        if runtime.delivery_tokens.read(token) is None:
            raise BadToken(N_("This link is not valid."))
        if not rule.message_token:
            raise BadToken(
                N_(
                    "A link from a magazine can only unsubscribe you or send you a link to "
                    "your preferences. Please use the link we mail you."
                )
            )
        request.state.from_message = True
        return
    runtime.links.signer.read(action, token)


async def authorize(request: Request) -> None:
    """The app-wide dependency: apply the route's rule from ``TABLE``."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    rule = rule_for(request.method, path) if isinstance(path, str) else None
    if rule is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route is not in the access table")
    if rule.kind == "link":
        _check_link(request, path or "", rule)
    if rule.kind not in ("staff", "second_factor"):
        return
    # The session or token is looked up in a worker thread: never a database call on the loop.
    context = await run_in_threadpool(_identify, request, rule.kind == "staff")
    if context is None:
        if path is not None and path.startswith("/admin") and request.method in READ_ONLY_METHODS:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid staff API token or login session is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if rule.kind == "staff" and not rule.admits(context.user.role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
    if context.session is not None and request.method not in READ_ONLY_METHODS:
        await _check_csrf(request, context.session.csrf_token)
    request.state.staff = context


def unsubscribe_link(request: Request) -> UnsubscribeLink:
    """The checked token of an unsubscribe route, as ``authorize`` read it."""
    link: UnsubscribeLink = request.state.unsubscribe_link
    return link


def from_message(request: Request) -> bool:
    """Whether a link route was opened with the delivery token a message carries (which a
    processor and every relay has held) rather than one of the person's own links."""
    return bool(getattr(request.state, "from_message", False))


def login_redirect_target(target: str) -> str:
    return f"/admin/login?next={quote(target, safe='')}"


def current_context(request: Request) -> StaffContext:
    context: StaffContext | None = getattr(request.state, "staff", None)
    if context is None:  # a route whose rule is not a staff rule asked for staff
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in")
    return context


def current_staff(request: Request) -> StaffUser:
    return current_context(request).user


CurrentStaff = Annotated[StaffUser, Depends(current_staff)]
CurrentContext = Annotated[StaffContext, Depends(current_context)]
