"""The authorization matrix: every operation of the OpenAPI spec, called by every kind of
caller, answers as ``subscriptions.access.TABLE`` says, and the table covers every route.

Callers: anonymous; each staff role with a personal API token and with a browser session;
a session half-way through login; a subscriber holding their link tokens; whoever holds what
a message carries (its delivery token: a processor, every relay); a processor's machine
credential; the metrics scraper; the feedback provider. "Admitted" means the answer
is not 401, 403 or the login page (a 404 for a made-up id, a 422 for an empty body, are
admissions: the caller got past the door). "Refused" means exactly those.

Ids in paths are made up (999999), so an admitted call acts on nothing; the few routes
without ids (logout) get a fresh session each call.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from mailer.models import Delivery
from subscriptions import staff as accounts
from subscriptions.access import TABLE, Rule, rule_for
from subscriptions.auth import issue_token
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentEvent,
    PrivacyRequest,
    RequestChannel,
    RequestKind,
    StaffRole,
    StaffUser,
    Subscriber,
    SystemMail,
)
from subscriptions.routes import captured
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.conftest import METRICS_TOKEN, WEBHOOK_SECRET
from tests.subscriptions.test_processor_api import credential, started_pull_issue
from tests.support.pages import link_in, local, page_link
from tests.support.smtp import SMTPSink

# The capture viewer's routes, mounted only without an SMTP relay: read from its router, so
# that the table's names for them cannot drift from the routes' (they once did: a 403).
DEV_ONLY = {
    f"{method} {route.path}"
    for route in captured.router.routes
    if isinstance(route, APIRoute)
    for method in route.methods or ()
}
MADE_UP = "999999"
FORGED = "eyJmb3JnZWQiOnRydWV9.ZZZZZZ.c2lnbmF0dXJlLW5vdC1yZWFs"


@dataclass
class Caller:
    name: str
    headers: dict[str, str] = field(default_factory=dict)
    session_for: StaffUser | None = None  # a fresh browser session per request
    half_way: bool = False
    role: StaffRole | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # path prefix -> link token


def staff_user(engine: Engine, role: StaffRole, label: str = "") -> StaffUser:
    with Session(for_writing(engine), expire_on_commit=False) as session:
        email = f"{role.value}{label}@matrix.example"
        user = StaffUser(email=email, role=role, password_hash="x")
        session.add(user)
        session.commit()
    return user


def token_of(engine: Engine, user: StaffUser) -> str:
    with Session(for_writing(engine)) as session:
        token = issue_token(session, user, label="matrix")
        session.commit()
    return token


def callers(app: FastAPI, engine: Engine) -> list[Caller]:
    runtime: Runtime = app.state.runtime
    issue_id, people = started_pull_issue(app, engine, 1)
    person = people[0]
    with Session(engine) as session:
        subscriber = session.get(Subscriber, person.id)
        assert subscriber is not None
        delivery = session.exec(select(Delivery).where(Delivery.issue_id == issue_id)).one()
        assert delivery.id is not None
        links = runtime.links
    with Session(for_writing(engine)) as session:
        asked = runtime.desk.receive(
            session, kind=RequestKind.complaint, address=person.email, channel=RequestChannel.email
        )
        session.commit()
        tokens = {
            "/confirm/": links.token(Action.confirm, subscriber),
            "/preferences/": links.token(Action.preferences, subscriber),
            "/erase/": links.token(Action.erase, subscriber),
            "/u/": runtime.delivery_tokens.make(delivery.id),
            "/disclosure/": links.signer.make(Action.disclosure, subscriber.token_key, "1"),
            "/verify/": links.signer.make(Action.verify, str(asked.id), asked.subject_digest),
        }
    carried = runtime.delivery_tokens.make(delivery.id)
    result = [
        Caller("anonymous"),
        Caller("subscriber", {"Authorization": f"Bearer {tokens['/preferences/']}"}, tokens=tokens),
        Caller("message holder", tokens={"/u/": carried, "/preferences/": carried}),
        Caller("processor", {"Authorization": f"Bearer {credential(engine, 'sakura-asia')}"}),
        Caller("scraper", {"Authorization": f"Bearer {METRICS_TOKEN}"}),
        Caller("provider"),
        Caller(
            "half-way", session_for=staff_user(engine, StaffRole.viewer, "-half-way"), half_way=True
        ),
    ]
    for role in StaffRole:
        user = staff_user(engine, role)
        result.append(
            Caller(
                f"{role.value} token",
                {"Authorization": f"Bearer {token_of(engine, user)}"},
                role=role,
            )
        )
        result.append(Caller(f"{role.value} session", session_for=user, role=role))
    return result


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation; erasing the subscriber comes last (their tokens serve the others)."""
    spec = app.openapi()
    found = [
        (method.upper(), path, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]
    return sorted(found, key=lambda op: (op[0], op[1]) == ("POST", "/erase/{token}"))


def admitted_by(rule: Rule, caller: Caller) -> bool:
    if rule.kind in ("public", "login"):
        return True
    if rule.kind == "link":
        if caller.name == "message holder":
            return rule.message_token
        return bool(caller.tokens)
    if rule.kind == "processor":
        return caller.name == "processor"
    if rule.kind == "metrics":
        return caller.name == "scraper"
    if rule.kind == "webhook":
        return caller.name == "provider"
    if rule.kind == "second_factor":
        return caller.half_way
    return caller.role is not None and rule.admits(caller.role)


def fill(path: str, caller: Caller) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "token":
            prefix = path.split("{", 1)[0]
            return caller.tokens.get(prefix, FORGED)
        return {"slug": "weekly", "name": "admin.js"}.get(name, MADE_UP)

    return re.sub(r"\{(\w+)\}", value, path)


QUERIES = {"/admin/notices": {"a": MADE_UP, "b": MADE_UP}, "/admin/progress": {"ids": MADE_UP}}


def call(
    client: TestClient,
    engine: Engine,
    method: str,
    path: str,
    operation: dict[str, Any],
    caller: Caller,
    *,
    with_csrf: bool = True,
) -> httpx.Response:
    headers = dict(caller.headers)
    client.cookies.clear()
    csrf = ""
    if caller.session_for is not None:
        with Session(for_writing(engine)) as session:
            found, cookie = accounts.open_session(
                session,
                caller.session_for,
                second_factor=not caller.half_way,
                source="",
                user_agent="",
            )
            csrf = found.csrf_token
            session.commit()
        client.cookies.set(accounts.SESSION_COOKIE, cookie)
        if with_csrf:
            headers["X-CSRF-Token"] = csrf
    params = dict(QUERIES.get(path, {}))
    if path.endswith("/subscribers") and path.startswith("/api"):
        params["fields"] = "email"
    content = operation.get("requestBody", {}).get("content", {})
    kwargs: dict[str, Any] = {}
    if "application/json" in content:
        kwargs["content"] = b"{}"
        headers["Content-Type"] = "application/json"
    elif content:
        kwargs["content"] = b""
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if caller.name == "provider":
        stamp = str(int(time.time()))
        body = kwargs.get("content", b"")
        digest = hmac.new(WEBHOOK_SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        headers |= {"X-Mailmag-Timestamp": stamp, "X-Mailmag-Signature": digest.hexdigest()}
    else:
        headers |= {"X-Mailmag-Timestamp": "1", "X-Mailmag-Signature": "0" * 64}
    return client.request(
        method,
        fill(path, caller),
        params=params,
        headers=headers,
        follow_redirects=False,
        **kwargs,
    )


def refused(answer: httpx.Response, rule: Rule) -> bool:
    if answer.status_code in (401, 403):
        return True
    location = answer.headers.get("location", "")
    if answer.status_code == 303 and answer.request.method == "GET":
        return location.startswith("/admin/login")
    return rule.kind == "link" and answer.status_code == 400  # a forged link


def test_the_table_covers_every_route_and_nothing_else(locked_app: FastAPI) -> None:
    documented = {f"{method} {path}" for method, path, _op in operations(locked_app)}
    assert documented - set(TABLE) == set(), "routes missing from the access table"
    assert set(TABLE) - documented == DEV_ONLY, "table rows without a route"


def test_every_caller_gets_exactly_what_the_table_says(locked_app: FastAPI, engine: Engine) -> None:
    everyone = callers(locked_app, engine)
    deviations = []
    checked = 0
    client = TestClient(locked_app)
    for method, path, operation in operations(locked_app):
        rule = rule_for(method, path)
        assert rule is not None
        for caller in everyone:
            answer = call(client, engine, method, path, operation, caller)
            checked += 1
            expected = admitted_by(rule, caller)
            if answer.status_code >= 500 or refused(answer, rule) == expected:
                deviations.append(
                    f"{method} {path} as {caller.name}: {answer.status_code} "
                    f"(expected {'admitted' if expected else 'refused'}) {answer.text[:120]}"
                )
    print(f"\nauthorization matrix: {checked} calls, {len(deviations)} deviations")
    assert deviations == [], "\n".join(deviations)
    assert checked >= len(TABLE) * 10


def test_cookie_calls_without_the_csrf_token_are_refused_on_every_changing_route(
    locked_app: FastAPI, engine: Engine
) -> None:
    client = TestClient(locked_app)
    users = {role: staff_user(engine, role) for role in StaffRole}
    tried = 0
    for method, path, operation in operations(locked_app):
        rule = rule_for(method, path)
        assert rule is not None
        if method in ("GET", "HEAD") or rule.kind != "staff":
            continue
        role = next(iter(sorted(rule.roles)))
        caller = Caller("no csrf", session_for=users[role], role=role)
        answer = call(client, engine, method, path, operation, caller, with_csrf=False)
        assert answer.status_code == 403, f"{method} {path}: {answer.status_code}"
        tried += 1
    changing = [k for k, r in TABLE.items() if r.kind == "staff" and not k.startswith("GET ")]
    assert tried == len(changing)


# What each /preferences/ route is sent in the checks below: a body that would read or change
# the most (every consent granted, the profile rewritten, a disclosure asked for).
PREFERENCE_BODIES: dict[str, dict[str, str]] = {
    "POST /preferences/{token}": {
        "magazines": "weekly",
        "company": "Taken Over K.K.",
        "joint_use": "yes",
        "foreign_transfer": "yes",
    },
    "POST /preferences/{token}/request": {"kind": "disclosure", "text": "send it all"},
}


def _person_state(engine: Engine, person_id: int) -> tuple[object, ...]:
    with Session(engine) as session:
        person = session.get(Subscriber, person_id)
        assert person is not None
        events = session.exec(select(func.count()).select_from(ConsentEvent)).one()
        asked = session.exec(select(func.count()).select_from(PrivacyRequest)).one()
        mails = sorted(m.kind for m in session.exec(select(SystemMail)).all())
        return person.company, person.name, events, asked, mails


def message_token(app: FastAPI, engine: Engine) -> tuple[str, Subscriber]:
    """The delivery token a message of a started issue carries, and its recipient."""
    runtime: Runtime = app.state.runtime
    issue_id, [person] = started_pull_issue(app, engine, 1)
    with Session(engine) as session:
        delivery = session.exec(select(Delivery).where(Delivery.issue_id == issue_id)).one()
    return runtime.delivery_tokens.make(delivery.id or 0), person


def test_a_messages_token_unsubscribes_and_offers_a_link_but_opens_nothing_else(
    locked_app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    """Every /preferences/ route, with the delivery token a message carries and with the
    person's own link: the first reads and changes nothing of theirs (it may only mail them a
    fresh link), the second opens everything."""
    runtime: Runtime = locked_app.state.runtime
    carried, person = message_token(locked_app, engine)
    own = runtime.links.token(Action.preferences, person)
    routes = sorted(key for key in TABLE if " /preferences/" in key)
    assert len(routes) >= 6
    secrets_of_person = ("Secret Co 0", "Reader 0", person.email, "joint_use", "consent")
    client = TestClient(locked_app)
    before = _person_state(engine, person.id or 0)
    opened = []
    for key in routes:
        method, template = key.split(" ", 1)
        path = template.replace("{token}", carried)
        answer = client.request(
            method, path, data=PREFERENCE_BODIES.get(key), follow_redirects=False
        )
        leaked = [s for s in secrets_of_person if s in answer.text]
        assert leaked == [], f"{key} with a message's token shows {leaked}"
        if answer.status_code != 400:
            opened.append(key)
    assert opened == ["GET /preferences/{token}", "POST /preferences/{token}/link"]
    company, name, events, asked, mails = _person_state(engine, person.id or 0)
    assert (company, name, events, asked) == before[:4], "a message's token changed something"
    assert mails == ["preferences_link"], "only the offered link is mailed"

    # The offered link goes to the person's own address and is a real preferences link.
    mail = smtp_server.wait_for(1)[0]
    assert mail.rcpt_tos == (person.email,)
    fresh = local(link_in(mail.message(), "/preferences/"))
    assert carried not in fresh
    page = client.get(fresh)
    assert page.status_code == 200
    assert "Secret Co 0" in page.text

    # The person's own link opens every route (erasure last: it mails a confirmation).
    for key in routes:
        method, template = key.split(" ", 1)
        path = template.replace("{token}", own)
        answer = client.request(
            method, path, data=PREFERENCE_BODIES.get(key), follow_redirects=False
        )
        assert answer.status_code in (200, 303), (
            f"{key} with the person's link: {answer.status_code}"
        )
    assert "Taken Over K.K." in client.post(f"/preferences/{own}/export").text


def test_unsubscribing_with_a_messages_token_leads_to_the_offer_not_to_preferences(
    locked_app: FastAPI, engine: Engine
) -> None:
    carried, person = message_token(locked_app, engine)
    client = TestClient(locked_app)
    answer = client.post(f"/u/{carried}")
    assert answer.status_code == 200
    assert page_link(answer.text, "/preferences/").startswith(f"/preferences/{carried}?")
    offer = client.get(f"/preferences/{carried}")
    assert offer.status_code == 200
    assert "Secret Co 0" not in offer.text
    assert person.email not in offer.text


def test_a_messages_token_mails_at_most_three_links_a_day(
    locked_app: FastAPI, engine: Engine
) -> None:
    carried, person = message_token(locked_app, engine)
    client = TestClient(locked_app)
    answers = [client.post(f"/preferences/{carried}/link").status_code for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    with Session(engine) as session:
        mailed = session.exec(
            select(func.count())
            .select_from(SystemMail)
            .where(SystemMail.kind == "preferences_link")
            .where(SystemMail.recipient == person.email)
        ).one()
    assert mailed == 3
