"""A webhook for a sending provider's bounce and complaint events.

``POST /api/v1/feedback/webhook`` with a JSON body::

    {"id": "evt-123",
     "type": "hard_bounce" | "soft_bounce" | "blocked" | "complaint" | "unsubscribe",
     "token": "<the delivery token>"  or  "return_path": "bounce+<token>@<bounce domain>",
     "detail": "550 5.1.1 user unknown"}

A bounce whose ``detail`` holds an RFC 3463 enhanced status is read by that status, as
every bounce is (``mailer.bounces``): a provider's "hard_bounce" for ``5.7.1`` (refused as
spam) suppresses nobody, and its "soft_bounce" for ``5.1.1`` does.

and two headers: ``X-Mailmag-Timestamp`` (Unix seconds) and ``X-Mailmag-Signature``, the hex
HMAC-SHA256 of ``"<timestamp>.<raw body>"`` under ``MAILMAG_WEBHOOK_SECRET``. Requests more
than five minutes off, or with a wrong signature, are refused; an event id seen before is
acknowledged without acting again (replays change nothing). The event is stored and acted
on in one transaction before the 200 answer. Without a configured secret the endpoint
answers 404.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailer.bounces import enhanced_status
from mailer.feedback import Feedback, FeedbackKind, bounce
from mailer.transactions import for_writing
from mailer.verp import TOKEN_LENGTH
from subscriptions.deps import RuntimeDep
from subscriptions.models import WebhookEvent
from subscriptions.runtime import Runtime

router = APIRouter(prefix="/api/v1/feedback", tags=["feedback"])

MAX_SKEW_SECONDS = 300


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    type: Literal["hard_bounce", "soft_bounce", "blocked", "complaint", "unsubscribe"]
    token: str | None = Field(default=None, max_length=64)
    return_path: str | None = Field(default=None, max_length=320)
    detail: str = Field(default="", max_length=500)


class WebhookAnswer(BaseModel):
    status: Literal["processed", "duplicate"]
    outcome: str


def _signature_ok(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


@router.post(
    "/webhook",
    responses={401: {"description": "bad signature or stale timestamp"}, 404: {}, 422: {}},
)
async def feedback_webhook(
    request: Request,
    runtime: RuntimeDep,
    timestamp: Annotated[str, Header(alias="X-Mailmag-Timestamp", max_length=20)],
    signature: Annotated[str, Header(alias="X-Mailmag-Signature", max_length=128)],
) -> WebhookAnswer:
    secret = runtime.settings.webhook_secret
    if secret is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the feedback webhook is not enabled")
    body = await request.body()  # at most 64 KB: the edge refuses more while it streams
    sent_at = _unix_seconds(timestamp)
    if sent_at is None or abs(time.time() - sent_at) > MAX_SKEW_SECONDS:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "stale or missing timestamp")
    if not _signature_ok(secret.get_secret_value().encode(), timestamp, body, signature):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad signature")
    try:
        event = FeedbackEvent.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.errors()[0]["msg"]) from None
    token = event.token or _token_of(event.return_path or "")
    delivery_id = runtime.delivery_tokens.read(token) if token else None
    detail = event.detail or "webhook"
    feedback = Feedback(FeedbackKind(event.type), delivery_id, detail)
    if event.type in ("hard_bounce", "soft_bounce"):
        code = enhanced_status(event.detail)
        feedback = bounce(delivery_id, detail, code, permanent=event.type == "hard_bounce")
    return await run_in_threadpool(_apply, runtime, event, feedback)


def _apply(runtime: Runtime, event: FeedbackEvent, feedback: Feedback) -> WebhookAnswer:
    """Store the event and what it changes, together (in a worker thread, off the loop)."""
    with Session(for_writing(runtime.engine)) as session:
        stored = WebhookEvent(event_id=event.id, kind=event.type)
        try:
            with session.begin_nested():
                session.add(stored)
        except IntegrityError:
            return WebhookAnswer(status="duplicate", outcome="already processed")
        outcome = runtime.feedback().apply_in(session, feedback)
        stored.outcome = outcome[:500]
        session.add(stored)
        session.commit()
    return WebhookAnswer(status="processed", outcome=outcome)


def _unix_seconds(value: str) -> int | None:
    """ASCII digits only: ``str.isdigit`` is also true of "²" and other digits that ``int``
    refuses (a 500 before), and ``int`` takes "٣" or "1_0"."""
    return int(value) if re.fullmatch(r"[0-9]{1,20}", value) else None


def _token_of(return_path: str) -> str | None:
    match = re.fullmatch(rf"bounce\+([a-z2-7]{{{TOKEN_LENGTH}}})@.+", return_path.lower())
    return match.group(1) if match else None
