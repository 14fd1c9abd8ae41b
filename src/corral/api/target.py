"""``/v1/target``: the declarative desired state — get, plan, set, and the rollout's status.

Routes call :class:`corral.supervisor.facade.Facade` and nothing else.  ``PUT /v1/target``
validates everything first (an error changes nothing and names file, line and field of
every problem), applies additions, removals and rescales before it answers, and leaves
health-gated replacements running: ``GET /v1/target/status`` follows them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from corral.supervisor.facade import Facade

from .models import ErrorResponse

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (
        HTTPStatus.BAD_REQUEST, HTTPStatus.CONFLICT, HTTPStatus.UNPROCESSABLE_ENTITY,
        HTTPStatus.SERVICE_UNAVAILABLE)}
# A 1,000-process target is ~150 KiB of YAML; 16 MiB leaves room and bounds the request.
_MAX_YAML = 16 * 1024 * 1024


class TargetText(BaseModel):
    """A target as YAML text, and where it came from (named in every error)."""

    model_config = ConfigDict(extra="forbid")
    yaml: str = Field(max_length=_MAX_YAML)
    source: str = Field(default="<api>", max_length=4096)


def target_router(facade: Facade) -> APIRouter:
    """The ``/v1/target`` routes around ``facade``."""
    router = APIRouter(prefix="/v1/target", tags=["target"])

    @router.get("")
    async def get_target() -> dict[str, Any]:
        """Everything loaded (by ``target set`` or ``svc load``) as canonical YAML."""
        return facade.target_get()

    @router.post("/plan", responses=_ERRORS)
    async def plan(body: TargetText) -> dict[str, Any]:
        """What ``PUT /v1/target`` would add, change (with the fields) and remove."""
        return await facade.target_plan(body.yaml, body.source)

    @router.put("", responses=_ERRORS)
    async def set_target(body: TargetText) -> dict[str, Any]:
        """Validate and apply a target.  ``result``: ``unchanged``, ``applied`` (nothing to
        replace), or ``applying`` (replacements run on; see ``/v1/target/status``)."""
        return await facade.target_set(body.yaml, body.source)

    @router.get("/status")
    async def status() -> dict[str, Any]:
        """The running rollout, or the last one: each process's progress and, when it
        failed, why and the new instance's last log lines."""
        return facade.target_status()

    return router
