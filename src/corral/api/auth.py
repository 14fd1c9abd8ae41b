"""Bearer-token authentication for the remote (TCP + TLS) listener, and the auth endpoints.

:class:`TokenAuth` wraps the one ASGI application only where it is served over TCP; the
local ``api.sock`` (mode 0600: only its owner and root can connect) serves the bare app.
A request passes when its ``Authorization: Bearer <token>`` matches the current token
(:func:`hmac.compare_digest`, constant time), or when it is one of the few requests that
carry no data: ``GET /`` and ``GET /assets/...`` (the dashboard page and its static files)
and, with ``--metrics-public``, ``GET /metrics``; with ``--health-public``, ``GET
/v1/health`` and ``GET /v1/health/live`` (for a load balancer's or kubelet's probes: they
say which services are not ready, nothing more).  Anything else answers 401 with the API's
error body, before the application sees it.

:func:`auth_routes` adds ``GET /v1/auth/client`` (``corral print-auth``) and
``POST /v1/auth/token`` (``corral sup rotate-token``).  Both also answer over TCP, behind
the token: the client file holds nothing a token holder does not already have, and a
remote operator who suspects a leaked token must be able to replace it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.errors import Conflict

from .models import ErrorResponse

if TYPE_CHECKING:  # cryptography (behind .tls) loads only with --listen-http
    from .tls import RemoteAccess

#: Requests that need no token (method, exact path); ``/assets/`` is matched as a prefix.
PUBLIC = {("GET", "/"), ("HEAD", "/")}
ASSETS = "/assets/"
METRICS = "/metrics"
HEALTH = frozenset({"/v1/health", "/v1/health/live"})


class TokenAuth:
    """ASGI middleware: let a request through only with the right bearer token.

    Args:
        app: the application to protect.
        token: returns the current token (called per request, so a rotation applies to
            the next request without a restart).
        metrics_public: let ``GET /metrics`` through without a token.
        health_public: let ``GET /v1/health`` and ``/v1/health/live`` through without one.
    """

    def __init__(self, app: ASGIApp, token: Callable[[], str],
                 metrics_public: bool = False, health_public: bool = False) -> None:
        self.app = app
        self.token = token
        self.metrics_public = metrics_public
        self.health_public = health_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan: no request to check
            return
        if self.is_public(scope) or self.authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await _unauthorized(send, b"authorization" in _header_names(scope))

    def is_public(self, scope: Scope) -> bool:
        """Whether this request needs no token (the dashboard shell, maybe metrics and
        health)."""
        method = scope.get("method", "GET")
        path: str = scope.get("path", "")
        if method not in ("GET", "HEAD"):
            return False
        if (method, path) in PUBLIC:
            return True
        if path.startswith(ASSETS):
            # No dot segments: a path that would leave /assets/ after normalisation
            # must not ride on the exemption.
            return ".." not in path.split("/") and "\\" not in path
        if self.health_public and path in HEALTH:
            return True
        return self.metrics_public and path == METRICS

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries ``Authorization: Bearer <current token>``."""
        token = self.token()
        if not token:
            return False  # no token could be read: nobody gets in
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(given.strip(), token.encode())
                return False
        return False


def _header_names(scope: Scope) -> set[bytes]:
    return {name for name, _ in scope.get("headers", ())}


async def _unauthorized(send: Send, had_header: bool) -> None:
    message = ("the token was refused (it may have been rotated; get the current auth file "
               "on the host with: corral print-auth)" if had_header else
               "this request needs a token: send 'Authorization: Bearer <token>' (get it on "
               "the host with: corral print-auth)")
    body = json.dumps({"error": {"code": "unauthorized", "message": message}}).encode()
    await send({"type": "http.response.start", "status": HTTPStatus.UNAUTHORIZED, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="corral"')]})
    await send({"type": "http.response.body", "body": body})


class ClientAuth(BaseModel):
    """What a client needs to reach this supervisor over TCP (``corral print-auth``)."""

    host: str
    server_name: str
    hostname: str
    ca_cert: str
    token: str


def auth_routes(remote: RemoteAccess | None) -> APIRouter:
    """The auth endpoints; they answer 409 when the supervisor has no TCP listener."""
    router = APIRouter(tags=["auth"])
    errors: dict[int | str, dict[str, object]] = {409: {"model": ErrorResponse}}

    def need() -> RemoteAccess:
        if remote is None:
            raise Conflict("remote access is off: this supervisor was started without "
                           "--listen-http (start it with: corral sup run --listen-http "
                           "HOST:PORT)")
        return remote

    @router.get("/v1/auth/client", responses=errors)
    async def client_auth() -> ClientAuth:
        """The client auth file's content: address, server name, CA certificate, token."""
        return ClientAuth(**need().client_auth())

    @router.post("/v1/auth/token", responses=errors)
    async def rotate_token() -> ClientAuth:
        """Replace the token: the old one stops working at once. Answers the new auth."""
        access = need()
        access.rotate_token()
        return ClientAuth(**access.client_auth())

    return router
