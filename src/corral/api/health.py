"""``GET /v1/health``: is everything that should run ready? For probes and load balancers.

200 when every service that should be up is ready (``status`` ``ok``, or ``warning`` when
a health check says warning), 503 with the names of those that are not (``critical``):
Habitat's ``/services/<svc>/<group>/health`` codes, and what a Kubernetes readiness probe
wants.  ``GET /v1/health/live`` answers 200 whenever the supervisor answers at all: a
liveness probe must not restart a whole pod because one service is down (corral restarts
that service itself).  Over ``--listen-http`` both need the token unless the supervisor
runs with ``--health-public`` (:class:`corral.api.auth.TokenAuth`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from corral.supervisor.facade import Facade


class ServiceHealth(BaseModel):
    """One service that should be up: its verdict, and why when it is not ok."""

    status: Literal["ok", "warning", "critical"]
    ready: int
    instances: int
    reason: str


class HealthReport(BaseModel):
    """The whole supervisor's verdict (``status``) and each wanted service's."""

    status: Literal["ok", "warning", "critical"]
    not_ready: list[str]
    warning: list[str]
    services: dict[str, ServiceHealth]


class Alive(BaseModel):
    status: Literal["ok"]


def health_router(facade: Facade) -> APIRouter:
    """The ``/v1/health`` routes around ``facade``."""
    router = APIRouter(prefix="/v1/health", tags=["health"])

    @router.get("", response_model=HealthReport, responses={
        503: {"model": HealthReport, "description": "a service that should be up is not "
                                                    "ready (status critical)"}})
    async def health() -> Any:
        """200 when every service that should be up is ready (ok or warning), 503 naming
        those that are not (critical)."""
        report = facade.health()
        return JSONResponse(report, status_code=HTTPStatus.SERVICE_UNAVAILABLE
                            if report["status"] == "critical" else HTTPStatus.OK)

    @router.get("/live", response_model=Alive)
    async def live() -> dict[str, str]:
        """200 whenever the supervisor answers (a liveness probe)."""
        return {"status": "ok"}

    return router
