"""``/v1/secrets`` and ``/v1/resources``: the secret and resource stores over HTTP.

Routes call :class:`corral.supervisor.facade.Facade` and nothing else.  Values of secrets
appear in exactly two answers, ``GET /v1/secrets/{name}`` and ``POST /v1/secrets/get``
(both sent with ``Cache-Control: no-store``); every list, error and event names secrets
only.  Uploads stream: ``POST /v1/resources?name=FILE`` reads the body chunk by chunk into
the store (memory stays constant), and downloads are served from the blob's file.
See ``docs/api.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from corral.supervisor.facade import Facade

from .models import ErrorResponse

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (
        HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT,
        HTTPStatus.UNPROCESSABLE_ENTITY, HTTPStatus.SERVICE_UNAVAILABLE)}
_NO_STORE = {"Cache-Control": "no-store"}
# A value may be 1 MiB of UTF-8; the store checks bytes, this only bounds the request.
_MAX_VALUE_CHARS = 1024 * 1024


class SecretValue(BaseModel):
    """``PUT /v1/secrets/{name}``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    value: str = Field(max_length=_MAX_VALUE_CHARS, repr=False)


class SecretNames(BaseModel):
    """``POST /v1/secrets/get`` and ``POST /v1/secrets/delete``: several names at once."""

    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(min_length=1, max_length=10_000)


class ResourceIds(BaseModel):
    """``POST /v1/resources/delete``: several ids at once."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=10_000)


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def stores_router(facade: Facade) -> APIRouter:
    """The routes of both stores, around ``facade``."""
    router = APIRouter()

    @router.get("/v1/secrets", tags=["secrets"])
    async def secrets() -> dict[str, Any]:
        """Every secret's name and the processes that use it (never a value)."""
        return {"secrets": facade.secrets()}

    @router.post("/v1/secrets/get", tags=["secrets"], responses=_ERRORS)
    async def secret_values(body: SecretNames) -> JSONResponse:
        """The values of several secrets, ``{"secrets": {name: value}}``; all or nothing:
        one unknown name is a 404 naming it."""
        return JSONResponse({"secrets": facade.secret_values(body.names)}, headers=_NO_STORE)

    @router.post("/v1/secrets/delete", tags=["secrets"], responses=_ERRORS)
    async def remove_secrets(body: SecretNames) -> dict[str, Any]:
        """Remove several secrets; all or nothing: an unknown name (404) or one a process
        uses (409, naming the processes) removes none."""
        return {"removed": facade.remove_secrets(body.names)}

    @router.get("/v1/secrets/{name}", tags=["secrets"], responses=_ERRORS)
    async def secret_value(name: str) -> JSONResponse:
        """One secret's value: ``{"name", "value"}``."""
        value = facade.secret_values([name])[name]
        return JSONResponse({"name": name, "value": value}, headers=_NO_STORE)

    @router.put("/v1/secrets/{name}", tags=["secrets"], responses=_ERRORS)
    async def set_secret(name: str, body: SecretValue) -> dict[str, Any]:
        """Add or change a secret.  A change replaces the processes that use it (the same
        health-gated rollout as a target change); ``result`` is ``added``, ``updated`` or
        ``unchanged``."""
        return await facade.set_secret(name, body.value)

    @router.delete("/v1/secrets/{name}", tags=["secrets"], responses=_ERRORS)
    async def remove_secret(name: str) -> dict[str, Any]:
        """Remove a secret; refused (409, naming them) while processes use it."""
        return {"removed": facade.remove_secrets([name])}

    @router.get("/v1/resources", tags=["resources"])
    async def resources() -> dict[str, Any]:
        """Every resource: ``{id, name, size, created, used_by}``, oldest first."""
        return {"resources": facade.resources()}

    @router.post("/v1/resources", status_code=HTTPStatus.CREATED, tags=["resources"],
                 responses=_ERRORS, openapi_extra=_UPLOAD_BODY)
    async def upload(request: Request,
                     name: str = Query(min_length=1, max_length=1024,
                                       description="the original file name")) -> Any:
        """Store the request body (streamed, any size) as a resource; its id is the sha256
        of the content, and the same content uploaded again is the same resource."""

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                yield chunk
        try:
            return await facade.add_resource(name, chunks())
        except ClientDisconnect:
            # Nobody is left to read this; the store removed its partial file.
            return JSONResponse({"error": {"code": "bad_request",
                                           "message": "the upload was cut short"}},
                                status_code=HTTPStatus.BAD_REQUEST)

    @router.post("/v1/resources/delete", tags=["resources"], responses=_ERRORS)
    async def remove_resources(body: ResourceIds) -> dict[str, Any]:
        """Remove several resources; all or nothing: an unknown id (404) or one a process
        lists (409, naming the processes) removes none."""
        return {"removed": facade.remove_resources(body.ids)}

    @router.get("/v1/resources/{resource_id}", tags=["resources"], responses=_ERRORS,
                response_class=FileResponse)
    async def download(resource_id: str) -> FileResponse:
        """The resource's bytes (``application/octet-stream``, its name in
        ``Content-Disposition``); the id is their sha256, for the client to check."""
        path, name = facade.resource_file(resource_id)
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    @router.delete("/v1/resources/{resource_id}", tags=["resources"], responses=_ERRORS)
    async def remove_resource(resource_id: str) -> dict[str, Any]:
        """Remove a resource; refused (409, naming them) while processes list it."""
        return {"removed": facade.remove_resources([resource_id])}

    return router
