"""Pages listing the mail held by the local capture server (embedded default only).

Mounted only when no SMTP relay is configured. The HTML part of a message is shown inside a
sandboxed ``iframe`` (no scripts, no same-origin access), as a mail client would. The frame
loads it from ``/_mail/<key>/html``, which has a policy of its own allowing the mail's
inline styles (``security_headers.MAIL_FRAME``): a ``srcdoc`` frame would inherit the page's
policy, under which the mail would lose its styles.
"""

from __future__ import annotations

from email.message import EmailMessage

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from mailer.capture import CapturedMessage, read_captured, read_one
from subscriptions.deps import RuntimeDep
from subscriptions.runtime import Runtime
from subscriptions.security_headers import MAIL_FRAME

router = APIRouter(prefix="/_mail", tags=["captured mail"], include_in_schema=False)


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    return body.get_content() if isinstance(body, EmailMessage) else ""


@router.get("", response_class=HTMLResponse)
def list_captured(request: Request, runtime: RuntimeDep) -> Response:
    messages = read_captured(runtime.captured_mail_dir)
    return runtime.templates.TemplateResponse(request, "captured/list.html", {"messages": messages})


def _found(runtime: Runtime, key: str) -> CapturedMessage:
    captured = read_one(runtime.captured_mail_dir, key)
    if captured is None:
        raise HTTPException(status_code=404, detail="no such captured message")
    return captured


@router.get("/{key}", response_class=HTMLResponse)
def show_captured(key: str, request: Request, runtime: RuntimeDep) -> Response:
    captured = _found(runtime, key)
    return runtime.templates.TemplateResponse(
        request,
        "captured/detail.html",
        {
            "captured": captured,
            "headers": list(captured.message.items()),
            "has_html": bool(_part(captured.message, "html")),
            "text": _part(captured.message, "plain"),
        },
    )


@router.get("/{key}/raw")
def raw_captured(key: str, runtime: RuntimeDep) -> Response:
    captured = _found(runtime, key)
    return Response(captured.message.as_bytes(), media_type="text/plain; charset=utf-8")


@router.get("/{key}/html")
def html_captured(key: str, runtime: RuntimeDep) -> Response:
    """The message's HTML part alone, for the detail page's frame."""
    response = HTMLResponse(_part(_found(runtime, key).message, "html"))
    response.headers["Content-Security-Policy"] = MAIL_FRAME
    return response
