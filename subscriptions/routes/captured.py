"""Pages listing the mail held by the local capture server (embedded default only).

Mounted only when no SMTP relay is configured. The HTML part of a message is shown inside a
sandboxed ``iframe`` (no scripts, no same-origin access), as a mail client would.
"""

from __future__ import annotations

from email.message import EmailMessage

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from mailer.capture import read_captured, read_one
from subscriptions.deps import RuntimeDep

router = APIRouter(prefix="/_mail", tags=["captured mail"], include_in_schema=False)


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    return body.get_content() if isinstance(body, EmailMessage) else ""


@router.get("", response_class=HTMLResponse)
def list_captured(request: Request, runtime: RuntimeDep) -> Response:
    messages = read_captured(runtime.captured_mail_dir)
    return runtime.templates.TemplateResponse(request, "captured/list.html", {"messages": messages})


@router.get("/{key}", response_class=HTMLResponse)
def show_captured(key: str, request: Request, runtime: RuntimeDep) -> Response:
    captured = read_one(runtime.captured_mail_dir, key)
    if captured is None:
        raise HTTPException(status_code=404, detail="no such captured message")
    return runtime.templates.TemplateResponse(
        request,
        "captured/detail.html",
        {
            "captured": captured,
            "headers": list(captured.message.items()),
            "html": _part(captured.message, "html"),
            "text": _part(captured.message, "plain"),
        },
    )


@router.get("/{key}/raw")
def raw_captured(key: str, runtime: RuntimeDep) -> Response:
    captured = read_one(runtime.captured_mail_dir, key)
    if captured is None:
        raise HTTPException(status_code=404, detail="no such captured message")
    return Response(captured.message.as_bytes(), media_type="text/plain; charset=utf-8")
