"""The privacy officer's JSON API: exports of a magazine's subscribers, minimised and audited.

``GET /api/v1/privacy/magazines/{slug}/subscribers?fields=email,name&format=csv`` streams the
export from a temporary file written (and audited) before the answer starts, so the audit
entry exists for every byte that leaves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from subscriptions.access import CurrentStaff
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep
from subscriptions.errors import InvalidInput
from subscriptions.exports import export_magazine
from subscriptions.models import SubscriptionStatus
from subscriptions.routes.admin_common import actor_of

router = APIRouter(prefix="/api/v1/privacy", tags=["privacy"])
MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


@router.get("/magazines/{slug}/subscribers")
def export_subscribers(
    slug: str,
    request: Request,
    runtime: RuntimeDep,
    user: CurrentStaff,
    fields: Annotated[str, Query(max_length=200, description="Comma-separated field names.")],
    fmt: Annotated[Literal["csv", "json"], Query(alias="format")] = "csv",
    statuses: Annotated[list[SubscriptionStatus] | None, Query(alias="status")] = None,
) -> StreamingResponse:
    """The subscribers of one magazine, only the fields asked for (audited)."""
    spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
    try:
        with Session(for_writing(runtime.engine)) as session:
            export_magazine(
                session,
                actor_of(user, request),
                magazine=slug,
                fields=fields.split(","),
                fmt=fmt,
                out=spool,
                statuses=statuses or [SubscriptionStatus.confirmed],
            )
            session.commit()
    except InvalidInput as exc:
        spool.close()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    spool.seek(0)

    def chunks() -> Iterator[str]:
        with spool:
            while block := spool.read(65536):
                yield block

    return StreamingResponse(
        chunks(),
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{slug}-subscribers.{fmt}"'},
    )
