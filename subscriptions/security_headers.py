"""The security headers of every response: a Content-Security-Policy that the page's own
scripts and styles satisfy and nothing else does, no framing by other sites, no sniffing.

One policy per kind of page, chosen by path (a response that sets its own keeps it):

- ``PAGES``, the subscriber's pages, captured mail and everything else: no script at all,
  styles from mailmag's own stylesheet (``/static/site.css``) only, no inline style.
- ``ADMIN``, the staff pages: scripts from mailmag only (``admin.js``, never inline). Inline
  styles are allowed here, and only here, because the issue editor shows its live preview
  in a sandboxed ``srcdoc`` frame, which inherits this policy and holds the mail's inline
  CSS (mail HTML is styled inline by nature); images over HTTPS show in that preview.
- ``DOCS``, ``/docs``: Swagger UI served by mailmag itself (``/static/swagger_ui/``, vendored
  from the npm package swagger-ui-dist), talking to ``/openapi.json`` only.
- ``MAIL_FRAME``, the HTML part of a captured mail, shown in a frame of ``/_mail``: inline
  styles and images as the mail has them, no script, no form, a sandboxed origin.

``frame-ancestors`` (and ``X-Frame-Options`` for older browsers) forbid framing everywhere
but the captured mail's own frame. With an ``https://`` base URL, HSTS is sent too.

The middleware is plain ASGI (it adds headers to the response's start message), so it costs
the hot paths (one-click unsubscribe) a few header writes and nothing else.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGES = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
ADMIN = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https:; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAIL_FRAME = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data: https:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
HSTS = "max-age=31536000"


def policy_for(path: str) -> str:
    if path == "/admin" or path.startswith("/admin/"):
        return ADMIN
    if path == "/docs":
        return DOCS
    return PAGES


class SecurityHeaders:
    """Adds the headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, *, https: bool = False) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault(
                    "X-Frame-Options",
                    "SAMEORIGIN"
                    if "frame-ancestors 'self'" in headers["Content-Security-Policy"]
                    else "DENY",
                )
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                if self.https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
