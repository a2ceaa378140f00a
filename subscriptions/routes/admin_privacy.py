"""The privacy officer's pages: people (search, their record, corrections) and requests.

Every page that shows a person is an audited read: the audit entry, with the people shown,
is written before the page is answered. Corrections record the fields changed and the reason
(not the values, which would copy personal data into the log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.columns import RowId
from mailer.models import Delivery, Issue
from subscriptions import audit, consent
from subscriptions.access import CurrentContext
from subscriptions.audit import Actor
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep
from subscriptions.errors import InvalidInput
from subscriptions.models import (
    Magazine,
    PrivacyRequest,
    RequestChannel,
    RequestKind,
    RequestStatus,
    Subscriber,
    Subscription,
)
from subscriptions.privacy_requests import CORRECTABLE, OPEN
from subscriptions.routes.admin_common import actor_of, render
from subscriptions.transfers import transfers_of

router = APIRouter(prefix="/admin", tags=["admin: privacy"])
# Bounds on what is read; the checks with their messages are the desk's (a value refused
# comes back on the page with what was typed).
Reason = Annotated[str, Form(max_length=2000)]
Correctable = Literal["name", "company", "department", "title", "phone"]


@router.get("/subscribers", response_class=HTMLResponse)
def subscribers(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    q: Annotated[str, Query(max_length=320)] = "",
) -> Response:
    """Search by address (a part of it, at least three characters)."""
    found: list[Subscriber] = []
    query = q.strip().lower()
    if len(query) >= 3:
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
            found = list(
                session.exec(
                    select(Subscriber)
                    # lower(): the query is lower-cased, and addresses keep the case typed
                    .where(func.lower(col(Subscriber.email)).like(f"%{escaped}%", escape="\\"))
                    .order_by(col(Subscriber.email))
                    .limit(50)
                ).all()
            )
            audit.record(
                session,
                actor_of(staff.user, request),
                "subscriber.searched",
                detail={"results": len(found)},
                subjects=sorted(s.address_digest for s in found),
                presorted=True,
            )
            session.commit()
    return render(
        request,
        "admin/subscribers.html",
        {"q": q, "found": found, "searched": len(query) >= 3},
        staff=staff,
    )


def _person_page(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    subscriber_id: RowId,
    error: str = "",
    code: int = 200,
    typed: dict[str, str] | None = None,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        person = session.get(Subscriber, subscriber_id)
        if person is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such subscriber")
        subscriptions = session.exec(
            select(Subscription, Magazine)
            .join(Magazine, col(Magazine.id) == Subscription.magazine_id)
            .where(Subscription.subscriber_id == person.id)
        ).all()
        deliveries = session.exec(
            select(Delivery, Issue)
            .join(Issue, col(Issue.id) == Delivery.issue_id)
            .where(Delivery.subscriber_id == person.id)
            .order_by(col(Delivery.id).desc())
            .limit(100)
        ).all()
        requests = session.exec(
            select(PrivacyRequest)
            .where(PrivacyRequest.subject_digest == person.address_digest)
            .order_by(col(PrivacyRequest.id).desc())
        ).all()
        context = {
            "person": person,
            "subscriptions": subscriptions,
            "events": consent.history(session, subscriber_id=subscriber_id),
            "deliveries": deliveries,
            "transfers": transfers_of(session, person),
            "requests": requests,
            "fields": CORRECTABLE,
            "error": error,
            "typed": typed or {},
        }
        audit.record(
            session,
            actor_of(staff.user, request),
            "subscriber.viewed",
            target=f"subscriber:{person.id}",
            subjects=[person.address_digest],
        )
        session.commit()
    return render(request, "admin/subscriber.html", context, staff=staff, status_code=code)


@router.get("/subscribers/{subscriber_id}", response_class=HTMLResponse)
def subscriber(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, subscriber_id: RowId
) -> Response:
    return _person_page(request, runtime, staff, subscriber_id)


@router.post("/subscribers/{subscriber_id}/correct", response_class=HTMLResponse)
def correct(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    subscriber_id: RowId,
    field: Annotated[Correctable, Form()],
    reason: Reason,
    value: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Correct one profile field, with the reason on record; a value that may not be
    stored comes back on the page with what was typed and the reason it was refused."""
    with Session(for_writing(runtime.engine)) as session:
        person = session.get(Subscriber, subscriber_id)
        if person is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such subscriber")
        try:
            runtime.desk.correct(
                session, person, {field: value}, actor=actor_of(staff.user, request), reason=reason
            )
        except InvalidInput as exc:
            session.rollback()
            typed = {"field": field, "value": value, "reason": reason}
            return _person_page(request, runtime, staff, subscriber_id, str(exc), 422, typed)
        session.commit()
    return RedirectResponse(f"/admin/subscribers/{subscriber_id}", status_code=303)


# --- requests -----------------------------------------------------------------------------------


def _requests_page(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    error: str = "",
    code: int = 200,
    typed: dict[str, str] | None = None,
) -> Response:
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(PrivacyRequest).order_by(
                col(PrivacyRequest.status).in_(OPEN).desc(), col(PrivacyRequest.due_at)
            )
        ).all()
    return render(
        request,
        "admin/requests.html",
        {
            "rows": rows,
            "kinds": list(RequestKind),
            "channels": [c for c in RequestChannel if c is not RequestChannel.preferences],
            "fields": CORRECTABLE,
            "error": error,
            "now": utcnow(),
            "typed": typed or {},
        },
        staff=staff,
        status_code=code,
    )


@router.get("/requests", response_class=HTMLResponse)
def requests_page(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    return _requests_page(request, runtime, staff)


@router.post("/requests", response_class=HTMLResponse)
def enter_request(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    kind: Annotated[RequestKind, Form()],
    channel: Annotated[RequestChannel, Form()],
    address: Annotated[str, Form(max_length=320)],
    message: Annotated[str, Form(max_length=20000)] = "",
    correction_field: Annotated[str, Form(max_length=20)] = "",
    correction_value: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """A request taken by phone, letter or mail; the address gets a link to confirm it."""
    if channel is RequestChannel.preferences:
        return _requests_page(request, runtime, staff, "Staff cannot enter that channel.", 422)
    correction = {correction_field: correction_value} if correction_field else {}
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        try:
            found = runtime.desk.receive(
                session,
                kind=kind,
                address=address,
                channel=channel,
                message=message,
                correction=correction,
                entered_by=actor_of(staff.user, request).name,
            )
        except InvalidInput as exc:
            typed = {
                "kind": kind.value,
                "channel": channel.value,
                "address": address,
                "message": message,
                "correction_field": correction_field,
                "correction_value": correction_value,
            }
            return _requests_page(request, runtime, staff, str(exc), 422, typed)
        audit.record(
            session,
            actor_of(staff.user, request),
            "privacy_request.entered",
            target=f"request:{found.id} {kind.value}",
            subjects=[found.subject_digest],
        )
        session.commit()
    runtime.wake_outbox()
    return RedirectResponse(f"/admin/requests/{found.id}", status_code=303)


def _load(session: Session, request_id: RowId) -> PrivacyRequest:
    found = session.get(PrivacyRequest, request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such request")
    return found


def _request_page(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    request_id: RowId,
    error: str = "",
    code: int = 200,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        found = _load(session, request_id)
        audit.record(
            session,
            actor_of(staff.user, request),
            "privacy_request.viewed",
            target=f"request:{found.id}",
            subjects=[found.subject_digest],
        )
        session.commit()
    return render(
        request,
        "admin/request.html",
        {"r": found, "error": error, "now": utcnow(), "open": found.status in OPEN},
        staff=staff,
        status_code=code,
    )


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_detail(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, request_id: RowId
) -> Response:
    return _request_page(request, runtime, staff, request_id)


Outcome = Annotated[str, Form(max_length=5000)]


def _close(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    request_id: int,
    act: Callable[[Session, PrivacyRequest, Actor, str], None],
    outcome: str,
) -> Response:
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        found = _load(session, request_id)
        try:
            act(session, found, actor_of(staff.user, request), outcome)
        except InvalidInput as exc:
            session.rollback()
            return _request_page(request, runtime, staff, request_id, str(exc), 409)
        session.commit()
    runtime.wake_outbox()
    return RedirectResponse(f"/admin/requests/{request_id}", status_code=303)


@router.post("/requests/{request_id}/complete", response_class=HTMLResponse)
def complete(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    request_id: RowId,
    outcome: Outcome = "",
) -> Response:
    """Perform the request (erase, stop, correct, disclose) and tell the person."""
    return _close(request, runtime, staff, request_id, runtime.desk.complete, outcome)


@router.post("/requests/{request_id}/reject", response_class=HTMLResponse)
def reject(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    request_id: RowId,
    outcome: Outcome = "",
) -> Response:
    """Refuse the request, with the reason mailed to the person."""
    return _close(request, runtime, staff, request_id, runtime.desk.reject, outcome)


@router.post("/requests/{request_id}/resend", response_class=HTMLResponse)
def resend(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, request_id: RowId
) -> Response:
    """Mail the verification link again (the person lost the first one)."""
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        found = _load(session, request_id)
        if found.status is not RequestStatus.awaiting_verification:
            return _request_page(
                request, runtime, staff, request_id, "It is verified already.", 409
            )
        runtime.desk.send_verification(session, found, "en")
        session.commit()
    runtime.wake_outbox()
    return RedirectResponse(f"/admin/requests/{request_id}", status_code=303)
