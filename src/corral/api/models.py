"""Request and response shapes of the HTTP API (shared by the app and its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LoadRequest(BaseModel):
    """``POST /v1/services``: a process entry as an object, or as YAML text."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any] | None = None
    yaml: str | None = None
    source: str = Field(default="<api>", max_length=4096)


class ScaleRequest(BaseModel):
    """``POST /v1/services/{name}/scale``."""

    model_config = ConfigDict(extra="forbid")
    instances: int = Field(ge=0, le=1000)


class ErrorBody(BaseModel):
    code: str
    message: str
    problems: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
