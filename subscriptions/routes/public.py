"""The subscriber-facing pages and the public JSON API.

Pages work without JavaScript. Links from mails open a page on GET and act only on POST, so
a mail scanner that follows links changes nothing. The one exception to "a page first" is
RFC 8058 one-click unsubscribe: ``POST /u/{token}`` with ``List-Unsubscribe=One-Click``
acts at once, with no cookie, session or CSRF token, as mail providers send it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ValidationError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from subscriptions.access import from_message, unsubscribe_link
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep, SessionDep
from subscriptions.errors import BadToken, InvalidInput, RateLimited, TestLink
from subscriptions.i18n import CONSENT_LABELS, N_, gettext_for, pick_locale
from subscriptions.models import ConsentChannel, Magazine, Subscriber, localised
from subscriptions.profile import PROFILE
from subscriptions.runtime import Runtime
from subscriptions.subscribing import Client, SignUpRequest
from subscriptions.tokens import Action

router = APIRouter(tags=["subscriber pages"])
api = APIRouter(prefix="/api/v1", tags=["public API"])

Token = Annotated[str, Path(max_length=512)]
Lang = Annotated[str | None, Query(max_length=8)]


def client_of(request: Request) -> Client:
    return Client(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def locale_of(request: Request, lang: str | None) -> str:
    return pick_locale(lang, request.headers.get("accept-language"))


def page(
    runtime: Runtime,
    request: Request,
    name: str,
    locale: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    values = {
        "_": gettext_for(locale),
        "lang": locale,
        "registry": runtime.registry,
        "consent_labels": CONSENT_LABELS,
        **context,
    }
    response = runtime.templates.TemplateResponse(request, name, values, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # links carry tokens
    return response


def message(
    runtime: Runtime,
    request: Request,
    locale: str,
    title: str,
    body: str,
    status_code: int = 200,
    **extra: Any,
) -> Response:
    return page(
        runtime,
        request,
        "pages/message.html",
        locale,
        {"title": title, "body": body, **extra},
        status_code,
    )


def bad_link(request: Request, error: Exception) -> Response:
    """The page for a forged, expired or misused link (installed as the BadToken handler,
    so routes simply let ``BadToken`` propagate)."""
    runtime: Runtime = request.app.state.runtime
    locale = locale_of(request, request.query_params.get("lang"))
    _ = gettext_for(locale)
    return message(
        runtime,
        request,
        locale,
        _("This link does not work"),
        _(str(error)),
        status.HTTP_400_BAD_REQUEST,
    )


def unavailable(request: Request) -> Response:
    """The page for a request the store could not serve (the app's handler adds
    ``Retry-After``): nothing is wrong with what the person sent."""
    runtime: Runtime = request.app.state.runtime
    locale = locale_of(request, request.query_params.get("lang"))
    _ = gettext_for(locale)
    return message(
        runtime,
        request,
        locale,
        _("Please try again in a minute"),
        _("We cannot take your request right now. Please try again in a minute."),
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )


TEST_LINK_DOES = {
    "unsubscribe": N_("In a real message this link unsubscribes the reader at once."),
    "preferences": N_("In a real message this link leads the reader to their preferences."),
}


def test_link(request: Request, error: Exception) -> Response:
    """The page of a link from a test message (installed as the TestLink handler): it says
    so, and nothing else happens, whether a person opened it or a mailbox provider posted
    a one-click unsubscribe to it."""
    assert isinstance(error, TestLink)
    runtime: Runtime = request.app.state.runtime
    locale = locale_of(request, request.query_params.get("lang"))
    _ = gettext_for(locale)
    does = TEST_LINK_DOES.get(error.action, "")
    return message(
        runtime,
        request,
        locale,
        _("This link is from a test message"),
        " ".join(
            part
            for part in (
                _("The message was a test of an issue, sent by its editors: nothing was changed."),
                _(does) if does else "",
            )
            if part
        ),
    )


# --- sign-up -------------------------------------------------------------------------------


def _magazines(session: Session) -> list[Magazine]:
    return list(session.exec(select(Magazine).where(Magazine.active).order_by(col(Magazine.id))))


def _form(
    runtime: Runtime,
    request: Request,
    locale: str,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The sign-up page (in a worker thread: it reads the magazines in a session of its own)."""
    notice = runtime.optin.notices.current(locale)
    with Session(runtime.engine) as session:
        magazines = [
            {
                "slug": m.slug,
                "title": localised(m.title, locale),
                "description": localised(m.description, locale),
            }
            for m in _magazines(session)
        ]
    return page(
        runtime,
        request,
        "pages/subscribe.html",
        locale,
        {
            "notice": notice,
            "magazines": magazines,
            "form_token": runtime.optin.new_form_token(),
            "values": values or {},
            "errors": errors or {},
            "required": runtime.registry.fields.required,
            "labels": runtime.registry.field_labels,
            "profile_fields": PROFILE,
            "countries": runtime.registry.foreign_countries,
        },
        status_code,
    )


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/subscribe", status_code=status.HTTP_307_TEMPORARY_REDIRECT)


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_form(request: Request, runtime: RuntimeDep, lang: Lang = None) -> Response:
    return _form(runtime, request, locale_of(request, lang))


def _validation_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "form"
        errors.setdefault(field, str(error["msg"]))
    return errors


async def _held(runtime: Runtime, started: float) -> None:
    """Hold a sign-up answer to ``MAILMAG_SIGNUP_ANSWER_MS``: new, pending, confirmed and
    unsubscribed addresses take different paths, and the time must not tell which."""
    remaining = runtime.settings.signup_answer_ms / 1000 - (time.perf_counter() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)


@router.post("/subscribe", response_class=HTMLResponse)
async def subscribe_submit(request: Request, runtime: RuntimeDep, lang: Lang = None) -> Response:
    """The body is read first; the checks, the writes and the page then run in a worker
    thread, in a session that ends before the answer is held (a coroutine route holds no
    session: a transaction held across the hold would keep SQLite's write lock for it)."""
    started = time.perf_counter()
    form = await request.form()
    answer = await run_in_threadpool(_subscribe_submit, request, runtime, form, lang)
    await _held(runtime, started)
    return answer


def _subscribe_submit(
    request: Request, runtime: Runtime, form: FormData, lang: str | None
) -> Response:
    locale = pick_locale(
        str(form.get("locale", "")) or lang, request.headers.get("accept-language")
    )
    _ = gettext_for(locale)
    raw: dict[str, Any] = {
        key: str(form.get(key, "")) for key in ("email", "notice_hash", "form_token", *PROFILE)
    }
    raw["magazines"] = [str(v) for v in form.getlist("magazines")]
    raw["joint_use"] = form.get("joint_use") == "yes"
    raw["foreign_transfer"] = form.get("foreign_transfer") == "yes"
    raw["locale"] = locale
    keep = {k: v for k, v in raw.items() if k not in ("form_token", "notice_hash")}
    # Every error of the form at once, each beside its field: what did not parse, and what
    # the sign-up's own checks refuse.
    errors = {k: _(v) for k, v in runtime.optin.input_errors(raw).items()}
    try:
        signup = SignUpRequest.model_validate(raw)
    except ValidationError as exc:
        errors = {k: _(v) for k, v in _validation_errors(exc).items()} | errors
    if errors:
        return _form(runtime, request, locale, values=keep, errors=errors, status_code=422)
    try:
        with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
            runtime.optin.sign_up(session, signup, client_of(request), ConsentChannel.web_form)
    except InvalidInput as exc:
        return _form(
            runtime,
            request,
            locale,
            values=keep,
            errors={field: _(text) for field, text in exc.problems.items()},
            status_code=422,
        )
    except BadToken as exc:
        return _form(
            runtime, request, locale, values=keep, errors={"form": _(str(exc))}, status_code=400
        )
    except RateLimited as exc:
        response = message(
            runtime,
            request,
            locale,
            _("Please try again later"),
            _(str(exc)),
            status.HTTP_429_TOO_MANY_REQUESTS,
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    runtime.wake_outbox()
    request.app.state.metrics.count("sign_up", "web_form")
    return message(
        runtime,
        request,
        locale,
        _("Check your inbox"),
        _(
            "If the address can receive our mail, a message is on its way to it. "
            "Follow the link in it to finish."
        ),
    )


class FormInfo(BaseModel):
    form_token: str
    notice_hash: str
    notice_locale: str
    notice: str
    magazines: list[dict[str, str]]
    required_fields: list[str]
    foreign_countries: list[str]


class Accepted(BaseModel):
    status: str = "accepted"
    detail: str


class Problem(BaseModel):
    detail: str
    field: str | None = None


class InvalidRequest(BaseModel):
    """FastAPI's answer to a body that does not fit the schema (one entry per error)."""

    detail: list[dict[str, Any]]


@api.get("/subscribe/form")
def api_form(
    request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> FormInfo:
    """A single-use form token (valid for ``MAILMAG_FORM_TOKEN_MINUTES``) and the notice to
    show before the visitor submits."""
    locale = locale_of(request, lang)
    notice = runtime.optin.notices.current(locale)
    return FormInfo(
        form_token=runtime.optin.new_form_token(),
        notice_hash=notice.content_hash,
        notice_locale=notice.locale,
        notice=notice.body,
        magazines=[
            {"slug": m.slug, "title": localised(m.title, locale)} for m in _magazines(session)
        ],
        required_fields=list(runtime.registry.fields.required),
        foreign_countries=[c.code for c in runtime.registry.foreign_countries],
    )


@api.post(
    "/subscribe",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        400: {"model": Problem},
        422: {"model": Problem | InvalidRequest},
        429: {"model": Problem},
    },
)
async def api_subscribe(signup: SignUpRequest, request: Request, runtime: RuntimeDep) -> Any:
    """Sign up for magazines. The answer is the same whatever the address's state, and takes
    the same time (``MAILMAG_SIGNUP_ANSWER_MS``)."""
    started = time.perf_counter()
    answer = await run_in_threadpool(_api_subscribe, signup, request, runtime)
    await _held(runtime, started)
    return answer


def _api_subscribe(signup: SignUpRequest, request: Request, runtime: Runtime) -> Any:
    try:
        # The checks and the confirmation mail's rendering run here, in parallel with other
        # requests; only the writes wait for the group commit, together with the sign-ups
        # waiting with this one.
        checked = runtime.optin.check_sign_up(signup, client_of(request), ConsentChannel.api)
        runtime.commits.run_together(runtime.optin.record_sign_ups, checked)
    except InvalidInput as exc:
        return JSONResponse(Problem(detail=exc.message, field=exc.field).model_dump(), 422)
    except BadToken as exc:
        return JSONResponse(Problem(detail=str(exc), field="form_token").model_dump(), 400)
    except RateLimited as exc:
        return JSONResponse(
            Problem(detail=str(exc)).model_dump(),
            429,
            headers={"Retry-After": str(exc.retry_after)},
        )
    runtime.wake_outbox()
    request.app.state.metrics.count("sign_up", "api")
    return Accepted(detail="if the address can receive mail, a confirmation request is on its way")


# --- confirmation ----------------------------------------------------------------------------


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.confirm, token)
    return page(
        runtime,
        request,
        "pages/confirm.html",
        locale,
        {
            "address": subscriber.email,
            "pending": runtime.optin.pending_titles(session, subscriber, locale),
        },
    )


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm_submit(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    subscriber = runtime.optin.confirm(session, token, client_of(request))
    request.app.state.metrics.count("confirm", "link")
    return message(
        runtime,
        request,
        locale,
        _("You are subscribed"),
        _("Thank you. Your subscription is confirmed."),
        link=runtime.links.url(Action.preferences, subscriber, lang=locale),
        link_text=_("Manage your preferences"),
    )


# --- preferences, export, erasure ------------------------------------------------------------


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(
    token: Token,
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    lang: Lang = None,
    saved: bool = False,
) -> Response:
    locale = locale_of(request, lang)
    if from_message(request):  # a processor and every relay has held this token
        runtime.optin.message_recipient(session, token)  # BadToken when it names no one
        return page(runtime, request, "pages/preferences_link.html", locale, {"token": token})
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
    return preferences_form(runtime, request, session, subscriber, token, locale, saved=saved)


def preferences_form(
    runtime: Runtime,
    request: Request,
    session: Session,
    subscriber: Subscriber,
    token: str,
    locale: str,
    *,
    saved: bool = False,
    refused: InvalidInput | None = None,
    values: dict[str, Any] | None = None,
    request_values: dict[str, str] | None = None,
) -> Response:
    """The preferences page; after a ``refused`` submission (a 422), with what was typed in
    the preferences form (``values``) or the request form (``request_values``) and the
    message of each field refused next to it (the request form's prefixed ``request_``)."""
    errors: dict[str, str] = {}
    if refused is not None:
        _ = gettext_for(locale)
        prefix = "request_" if request_values is not None else ""
        errors = {prefix + field: _(text) for field, text in refused.problems.items()}
    view = runtime.self_service.view(session, subscriber, locale)
    return page(
        runtime,
        request,
        "pages/preferences.html",
        locale,
        {
            "view": view,
            "token": token,
            "saved": saved,
            "labels": runtime.registry.field_labels,
            "profile_fields": PROFILE,
            "countries": runtime.registry.foreign_countries,
            "notice": runtime.optin.notices.current(locale),
            "values": values,
            "request_values": request_values or {},
            "errors": errors,
        },
        422 if refused is not None else 200,
    )


@router.post("/preferences/{token}")
async def preferences_submit(
    token: Token, request: Request, runtime: RuntimeDep, lang: Lang = None
) -> Response:
    """The body is read before anything else (a slow one holds no session), then the change
    is made in a worker thread, in a write session of its own."""
    form = await request.form()
    return await run_in_threadpool(_preferences_submit, token, request, runtime, form, lang)


def _preferences_submit(
    token: str, request: Request, runtime: Runtime, form: FormData, lang: str | None
) -> Response:
    locale = locale_of(request, lang)
    profile: dict[str, str | None] = {field: str(form.get(field, "")) for field in PROFILE}
    magazines = {str(v) for v in form.getlist("magazines")}
    joint_use = form.get("joint_use") == "yes"
    foreign_transfer = form.get("foreign_transfer") == "yes"
    client = client_of(request)
    notice = runtime.optin.notices.current(locale)
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
        try:
            runtime.self_service.update(
                session,
                subscriber,
                magazines=magazines,
                profile=profile,
                joint_use=joint_use,
                foreign_transfer=foreign_transfer,
                foreign_countries=[c.code for c in runtime.registry.foreign_countries],
                evidence=Evidence(
                    ConsentChannel.link, client.ip, client.user_agent, notice.content_hash
                ),
            )
        except InvalidInput as exc:
            session.rollback()
            typed = {
                **profile,
                "magazines": sorted(magazines),
                "joint_use": joint_use,
                "foreign_transfer": foreign_transfer,
            }
            return preferences_form(
                runtime, request, session, subscriber, token, locale, refused=exc, values=typed
            )
    return RedirectResponse(
        f"/preferences/{token}?lang={locale}&saved=1", status_code=status.HTTP_303_SEE_OTHER
    )


@router.post("/preferences/{token}/link", response_class=HTMLResponse)
def mail_preferences_link(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    """Mail the person a fresh preferences link, to their own address: what a message's
    "manage your preferences" link leads to (see ``access.MESSAGE_LINK``)."""
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    if from_message(request):
        subscriber = runtime.optin.message_recipient(session, token)
    else:
        subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
    if not runtime.optin.mail_preferences_link(session, subscriber):
        return message(
            runtime,
            request,
            locale,
            _("Please try again later"),
            _(
                "We have sent you a link several times today already. Please look for it "
                "in your inbox (and your spam folder), or try again tomorrow."
            ),
            status.HTTP_429_TOO_MANY_REQUESTS,
        )
    session.commit()
    runtime.wake_outbox()
    return message(
        runtime,
        request,
        locale,
        _("Check your inbox"),
        _(
            "We have sent a link to your preferences to the address this magazine was "
            "sent to. It works for %(days)d days."
        )
        % {"days": runtime.links.max_age(Action.preferences).days},
    )


@router.post("/preferences/{token}/export")
def export_data(token: Token, runtime: RuntimeDep, session: SessionDep) -> Response:
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
    data = runtime.self_service.export(session, subscriber)
    return Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        media_type="application/json",
        headers={
            "Content-Disposition": 'attachment; filename="my-data.json"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/preferences/{token}/erase", response_class=HTMLResponse)
def request_erasure(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.preferences, token)
    runtime.mailer.queue(
        session,
        "erase",
        recipient=subscriber.email,
        locale=locale,
        subject=N_("Confirm the deletion of your data"),
        address=subscriber.email,
        erase_url=runtime.links.url(Action.erase, subscriber, lang=locale),
        hours=runtime.settings.erase_link_hours,
    )
    session.commit()
    runtime.wake_outbox()
    return message(
        runtime,
        request,
        locale,
        _("Check your inbox"),
        _(
            "To protect you, we have sent a link to your address. "
            "Your data is deleted when you follow it."
        ),
    )


@router.get("/erase/{token}", response_class=HTMLResponse)
def erase_page(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.erase, token)
    return page(runtime, request, "pages/erase.html", locale, {"address": subscriber.email})


@router.post("/erase/{token}", response_class=HTMLResponse)
def erase_submit(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    subscriber, _scope = runtime.optin.subscriber_for(session, Action.erase, token)
    client = client_of(request)
    runtime.self_service.erase(
        session, subscriber, Evidence(ConsentChannel.erasure, client.ip, client.user_agent)
    )
    return message(
        runtime,
        request,
        locale,
        _("Your data has been deleted"),
        _(
            "We keep only a one-way fingerprint of your address so that we never mail it "
            "again, and the record of your consent that the law requires us to keep."
        ),
    )


# --- unsubscribe -----------------------------------------------------------------------------


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(
    token: Token, request: Request, runtime: RuntimeDep, session: SessionDep, lang: Lang = None
) -> Response:
    locale = locale_of(request, lang)
    subscriber, scope = runtime.optin.subscriber_for(session, Action.unsubscribe, token)
    magazine = _magazine_title(session, scope, locale)
    return page(
        runtime,
        request,
        "pages/unsubscribe.html",
        locale,
        {"address": subscriber.email, "magazine": magazine},
    )


def _magazine_title(session: Session, scope: str, locale: str) -> str | None:
    if not scope:
        return None
    magazine = session.exec(select(Magazine).where(Magazine.slug == scope)).first()
    return localised(magazine.title, locale) if magazine else None


@router.post("/u/{token}")
async def unsubscribe_submit(
    token: Token,
    request: Request,
    runtime: RuntimeDep,
    lang: Lang = None,
    one_click: Annotated[str | None, Form(alias="List-Unsubscribe")] = None,
) -> Response:
    """Unsubscribe at once: the page's button, or RFC 8058 one-click from a mail client.

    The token was checked by the access rule (``access.authorize``), on the event loop,
    with no database: its signature or seal. Then one write transaction (in a group commit,
    together with the other unsubscribes waiting) reads the link's person and ends whatever
    of theirs it covers that is still live, each with its withdrawal in the ledger, and
    commits before the answer; a repeated click finds nothing live and writes nothing. The
    route awaits the commit without holding a thread. The hot path of the public side: Core
    statements, no ORM."""
    locale = locale_of(request, lang)
    _ = gettext_for(locale)
    client = client_of(request)
    channel = ConsentChannel.one_click if one_click == "One-Click" else ConsentChannel.link
    evidence = Evidence(channel, client.ip, client.user_agent)

    try:
        link = unsubscribe_link(request)  # the token, as the access check read it
        await runtime.commits.run_together_async(runtime.optin.unsubscribe_all, (link, evidence))
    except BadToken as exc:
        if one_click is None:
            raise
        return Response(str(exc), status_code=400, media_type="text/plain")
    request.app.state.metrics.count("unsubscribe", channel.value)
    if one_click is not None:
        return Response("unsubscribed", media_type="text/plain")
    # What a message carries never leads to the person's own preferences link: a message's
    # token leads to the page that offers to mail them one.
    more: dict[str, Any] = {}
    if link.delivery_id is not None:
        more = {
            "link": f"/preferences/{token}?lang={locale}",
            "link_text": _("Manage your preferences"),
        }
    return message(
        runtime,
        request,
        locale,
        _("You are unsubscribed"),
        _("You will receive no more mail of this kind. This took effect immediately."),
        **more,
    )
