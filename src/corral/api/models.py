"""Request and response shapes of the HTTP API (shared by the app and its OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

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


class ValuesFile(BaseModel):
    """``PUT /v1/services/{name}/config``: a config file's text, its format and its name
    (for messages and ``config show``)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=1 << 20)
    format: Literal["toml", "yaml", "json"]
    source: str = Field(default="<api>", max_length=4096)


class ConfigApplyRequest(ValuesFile):
    """``PUT /v1/config/{service_group}``: a new version of a group's config."""

    version: int = Field(ge=1, le=(1 << 63) - 1)


class ErrorBody(BaseModel):
    code: str
    message: str
    problems: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
