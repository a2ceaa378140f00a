"""Liveness and readiness probes for load balancers and orchestrators.

``/healthz`` answers as long as the process serves HTTP. ``/readyz`` answers 200 only when the
database is reachable and its schema is at the latest migration; otherwise 503 with the
reason, so a deployment waits for ``mailmag migrate``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from subscriptions.db import check_connection
from subscriptions.deps import RuntimeDep
from subscriptions.errors import StoreError
from subscriptions.schema import revision_state

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    detail: str = ""


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
def readyz(runtime: RuntimeDep, response: Response) -> Health:
    try:
        check_connection(runtime.engine)
        state = revision_state(runtime.engine)
    except StoreError as exc:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", detail=f"database: {exc}")
    if not state.at_head:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(
            status="unavailable",
            detail=f"schema at {state.current or 'nothing'}, head is {state.head}: "
            "run `mailmag migrate`",
        )
    return Health(status="ready", detail=f"schema at {state.current}")
