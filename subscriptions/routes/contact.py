"""The contact point for the public: requests, complaints and consultations.

``/contact`` takes a request about any address and answers the same whether mailmag knows the
address or not; the address then gets a link (``/verify/<token>``) that confirms the request
came from its owner. From the preferences page (``/preferences/<token>/request``) a request is
verified already. ``/disclosure/<token>`` is where the person downloads their bundle once a
disclosure request is completed. Pages open on GET and act only on POST.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from mailer.ratelimit import check_in_turn
from subscriptions import audit
from subscriptions.audit import Actor
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep, SessionDep
from subscriptions.errors import BadToken, InvalidInput
from subscriptions.i18n import N_, gettext_for
from subscriptions.models import RequestChannel, RequestKind
from subscriptions.privacy_requests import CORRECTABLE
from subscriptions.routes.public import (
    Lang,
    Token,
    client_of,
    locale_of,
    message,
    page,
    preferences_form,
)
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action

router = APIRouter(tags=["contact point"])


Kind = Annotated[RequestKind, Form()]
# Bounds on what is read; the desk's checks say what is wrong with a value, next to its field,
# with what was typed kept.
Message = Annotated[str, Form(max_length=20000)]
Field = Annotated[str, Form(max_length=20)]
Value = Annotated[str, Form(max_length=2000)]


def _contact_form(
    runtime: Runtime,
    request: Request,
    locale: str,
    error: str = "",
    code: int = 200,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    return page(
        runtime,
        request,
        "pages/contact.html",
        locale,
        {
            "kinds": list(RequestKind),
            "fields": CORRECTABLE,
            "labels": runtime.registry.field_labels,
            "error": error,
            "values": values or {},
            "errors": errors or {},
        },
        code,
    )


@router.get("/contact", response_class=HTMLResponse)
def contact_page(request: Request, runtime: RuntimeDep, lang: Lang = None) -> Response:
    return _contact_form(runtime, request, locale_of(request, lang))


@router.post("/contact", response_class=HTMLResponse)
def contact_submit(
    request: Request,
    runtime: RuntimeDep,
    kind: Kind,
    address: Annotated[str, Form(max_length=320)],
    text: Message = "",
    correction_field: Field = "",
    correction_value: Value = "",
    lang: Lang = None,
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    client = client_of(request).ip or ""
    desk = runtime.desk
    if check_in_turn([(desk.per_client, client), (desk.per_address, address.lower())]):
        return _contact_form(
            runtime, request, locale, _("Too many requests; please try again later."), 429
        )
    with Session(for_writing(runtime.engine)) as session:
        try:
            runtime.desk.receive(
                session,
                kind=kind,
                address=address,
                channel=RequestChannel.contact_form,
                message=text,
                correction={correction_field: correction_value} if correction_field else {},
                locale=locale,
            )
        except InvalidInput as exc:
            typed = {
                "kind": kind.value,
                "address": address,
                "text": text,
                "correction_field": correction_field,
                "correction_value": correction_value,
            }
            errors = {field: _(problem) for field, problem in exc.problems.items()}
            return _contact_form(runtime, request, locale, code=422, values=typed, errors=errors)
        session.commit()
    runtime.wake_outbox()
    return message(
        runtime,
        request,
        locale,
        _("Check your inbox"),
        _(
            "We have sent a link to the address you gave. Your request is answered once "
            "you confirm it there."
        ),
    )


@router.post("/preferences/{token}/request", response_class=HTMLResponse)
def preferences_request(
    token: Token,
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    kind: Kind,
    text: Message = "",
    correction_field: Field = "",
    correction_value: Value = "",
    lang: Lang = None,
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
    try:
        found = runtime.desk.receive(
            session,
            kind=kind,
            address=subscriber.email,
            channel=RequestChannel.preferences,
            message=text,
            correction={correction_field: correction_value} if correction_field else {},
            locale=locale,
        )
    except InvalidInput as exc:
        session.rollback()
        typed = {
            "kind": kind.value,
            "text": text,
            "correction_field": correction_field,
            "correction_value": correction_value,
        }
        return preferences_form(
            runtime, request, session, subscriber, token, locale, refused=exc, request_values=typed
        )
    session.commit()
    return message(
        runtime,
        request,
        locale,
        _("We have your request"),
        _("We will answer by %(date)s.") % {"date": found.due_at.strftime("%Y-%m-%d")},
    )


@router.get("/verify/{token}", response_class=HTMLResponse)
def verify_page(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    found = runtime.desk.read_verification(session, token)
    return page(runtime, request, "pages/verify.html", locale, {"r": found, "token": token})


@router.post("/verify/{token}", response_class=HTMLResponse)
def verify_submit(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    found = runtime.desk.read_verification(session, token)
    runtime.desk.verify(session, found)
    session.commit()
    return message(
        runtime,
        request,
        locale,
        _("Thank you: your request is confirmed"),
        _("We will answer by %(date)s.") % {"date": found.due_at.strftime("%Y-%m-%d")},
    )


@router.get("/disclosure/{token}", response_class=HTMLResponse)
def disclosure_page(
    token: Token, request: Request, runtime: RuntimeDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    runtime.links.read(Action.disclosure, token)  # BadToken for a forged or expired link
    return page(runtime, request, "pages/disclosure.html", locale, {"token": token})


@router.post("/disclosure/{token}")
def disclosure_download(token: Token, request: Request, runtime: RuntimeDep) -> Response:
    """The bundle; the download is audited (the person's own read of their data)."""
    with Session(for_writing(runtime.engine)) as session:
        found = runtime.desk.disclosure(session, token)
        if found is None:
            raise BadToken(N_("This link is not valid."))
        subscriber, bundle = found
        audit.record(
            session,
            Actor("subject", client_of(request).ip or ""),
            "disclosure.downloaded",
            target=f"request:{bundle['request']}",
            subjects=[subscriber.address_digest],
        )
        session.commit()
    return Response(
        json.dumps(bundle, ensure_ascii=False, indent=2),
        media_type="application/json",
        status_code=status.HTTP_200_OK,
        headers={
            "Content-Disposition": 'attachment; filename="my-data.json"',
            "Cache-Control": "no-store",
        },
    )
