"""The token middleware (corral.api.auth.TokenAuth) on a bare ASGI app: pure logic, no sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from corral.api.auth import TokenAuth

TOKEN = "ab" * 32


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def call(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None,
         token: str = TOKEN, metrics_public: bool = False,
         kind: str = "http") -> tuple[int, dict[str, Any] | None, dict[bytes, bytes]]:
    """Run one request through TokenAuth; return (status, JSON body or None, headers)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = TokenAuth(_inner, lambda: token, metrics_public)
    scope = {"type": kind, "method": method, "path": path, "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    if kind == "websocket":
        return sent[0].get("code", 0), None, {}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return (sent[0]["status"], json.loads(body) if body != b"inner" else None,
            dict(sent[0]["headers"]))


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def test_the_right_token_passes() -> None:
    """`Authorization: Bearer <token>` reaches the app, whatever the scheme's case."""
    assert call("GET", "/v1/status", bearer(TOKEN))[0] == 200
    assert call("POST", "/v1/services", [(b"authorization", f"bearer {TOKEN}".encode())])[0] == 200


@pytest.mark.parametrize("headers", [
    None,
    bearer("cd" * 32),
    bearer(TOKEN[:-1]),
    bearer(TOKEN + "0"),
    bearer(""),
    [(b"authorization", f"Basic {TOKEN}".encode())],
    [(b"authorization", TOKEN.encode())],
    [(b"x-token", TOKEN.encode())],
])
def test_missing_or_wrong_token_is_401_with_the_error_body(headers: Any) -> None:
    """Any other credential answers 401 with {"error": {"code": "unauthorized", ...}}
    and a WWW-Authenticate challenge; the app never sees the request."""
    status, body, head = call("GET", "/v1/status", headers)
    assert status == 401
    assert body is not None and body["error"]["code"] == "unauthorized"
    assert body["error"]["message"]
    assert head[b"www-authenticate"].startswith(b"Bearer")
    assert TOKEN not in json.dumps(body)


def test_no_readable_token_lets_nobody_in() -> None:
    """If the token cannot be read (empty), even an empty bearer is refused."""
    assert call("GET", "/v1/status", bearer(""), token="")[0] == 401


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("HEAD", "/"), ("GET", "/assets/app.js"), ("GET", "/assets/css/x.css"),
])
def test_dashboard_shell_is_public(method: str, path: str) -> None:
    """The dashboard page and its static files need no token (they hold no data)."""
    assert call(method, path)[0] == 200


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/"), ("DELETE", "/assets/app.js"), ("GET", "/assets/../v1/status"),
    ("GET", "/assets/..\\v1"), ("GET", "/assetsx"), ("GET", "/openapi.json"), ("GET", "/docs"),
    ("GET", "/v1/auth/client"), ("POST", "/v1/auth/token"), ("GET", "/index.html"),
])
def test_everything_else_needs_the_token(method: str, path: str) -> None:
    """Other methods, other paths, and dot segments under /assets/ are not exempt."""
    assert call(method, path)[0] == 401


def test_metrics_is_public_only_when_asked() -> None:
    """GET /metrics needs the token unless --metrics-public; other paths stay closed."""
    assert call("GET", "/metrics")[0] == 401
    assert call("GET", "/metrics", metrics_public=True)[0] == 200
    assert call("GET", "/metrics/x", metrics_public=True)[0] == 401
    assert call("POST", "/metrics", metrics_public=True)[0] == 401


def test_a_rotated_token_applies_to_the_next_request() -> None:
    """The token is asked for on every request: after a rotation the old one is refused."""
    current = {"token": TOKEN}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = TokenAuth(_inner, lambda: current["token"])

    def status(token: str) -> int:
        sent.clear()
        asyncio.run(app({"type": "http", "method": "GET", "path": "/v1/status",
                         "headers": bearer(token)}, receive, send))
        return int(sent[0]["status"])
    assert status(TOKEN) == 200
    current["token"] = "ef" * 32
    assert status(TOKEN) == 401 and status("ef" * 32) == 200


def test_websocket_without_token_is_closed() -> None:
    """A websocket without the token is closed with 1008 (policy violation)."""
    assert call("GET", "/v1/ws", kind="websocket")[0] == 1008


def test_lifespan_passes_through() -> None:
    """Non-request scopes (lifespan) are not checked."""
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        pass

    asyncio.run(TokenAuth(inner, lambda: TOKEN)({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]
