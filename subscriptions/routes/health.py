"""Liveness and readiness probes for load balancers and orchestrators.

``/healthz`` answers as long as the process serves HTTP. ``/readyz`` answers 200 only when
this process can do its work (``subscriptions.readiness``: the database answers, its schema
is current, it takes writes, and the scheduler's sweeps are on time where this process
leads it); otherwise 503 with every reason, so a deployment waits for ``mailmag migrate``
and an orchestrator sends no traffic to a process whose disk is full.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from subscriptions.deps import RuntimeDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    detail: str = ""


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
async def readyz(runtime: RuntimeDep, response: Response) -> Health:
    verdict = await runtime.readiness.check(runtime.scheduler)
    if verdict.problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", detail="; ".join(verdict.problems))
    return Health(status="ready", detail=f"schema at {verdict.schema}")
