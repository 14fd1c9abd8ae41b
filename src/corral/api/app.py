"""The HTTP API: one ASGI application for the local socket (and, later, remote TLS).

Routes call :class:`corral.supervisor.facade.Facade` and nothing else of the supervisor.
Every error is ``{"error": {"code", "message"}}`` with the status of
:mod:`corral.errors`; no traceback ever leaves the process.  See ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import yaml
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from corral import __version__
from corral.errors import CorralError, NotReady, SpecError
from corral.logs import reader
from corral.supervisor.facade import Facade

from .auth import auth_routes
from .health import health_router
from .metrics import metrics_router
from .models import ConfigApplyRequest, ErrorResponse, LoadRequest, ScaleRequest, ValuesFile
from .stores import stores_router
from .target import target_router
from .ui import dashboard_router

if TYPE_CHECKING:  # cryptography (behind .tls) loads only with --listen-http
    from .tls import RemoteAccess

KEEPALIVE = 15.0
_WAIT = Query(None, ge=0, le=86400, description="seconds to wait for readiness")
_CURSOR_HELP = ("resume following just after this cursor (INODE:OFFSET[:START], the id of "
                "an event of an earlier follow), instead of the last n records")
_AFTER_HELP = "only events whose seq is greater (resuming a follow)"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (
        HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT,
        HTTPStatus.UNPROCESSABLE_ENTITY, HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE)}


def _error(status: int, code: str, message: str,
           problems: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if problems is not None and len(problems) > 1:
        body["problems"] = problems
    return JSONResponse({"error": body}, status_code=status)


def _sse(payload: Any, head: str = "") -> bytes:
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def create_app(facade: Facade, remote: RemoteAccess | None = None) -> FastAPI:
    """Build the application around ``facade``.

    ``remote`` is the TCP listener's TLS material and token (``--listen-http``), for the
    auth endpoints; without it they answer 409.  The token check itself is not here: it
    wraps this app only on the TCP listener (:class:`corral.api.auth.TokenAuth`).
    """
    app = FastAPI(title="corral", version=__version__,
                  description="Process launcher and multi-service supervisor.")

    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        problems = exc.problems if isinstance(exc, SpecError) else None
        if isinstance(exc, NotReady) and exc.details:
            problems = ["last log lines:", *exc.details]
        return _error(exc.status, exc.code, exc.message, problems)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(HTTPStatus.BAD_REQUEST, "bad_request",
                      f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == HTTPStatus.NOT_FOUND else "bad_request"
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(yaml.YAMLError)
    async def bad_yaml(request: Request, exc: yaml.YAMLError) -> JSONResponse:
        # The spec loader names the line of YAML errors it sees; one raised before it
        # parses (a control character in the text: libyaml's reader) lands here, and is
        # still the client's bad input, never a 500 (found by tests/integration/test_api_fuzz).
        return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_spec",
                      "invalid YAML: " + " ".join(str(exc).split()))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        print(f"corral-supervisor: internal error on {request.url.path}: {exc!r}",
              file=sys.stderr)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal",
                      f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/v1/status", tags=["supervisor"])
    async def status() -> dict[str, Any]:
        """The supervisor: versions, pids, state directory, uptime, service counts."""
        return facade.status()

    @app.get("/v1/census", tags=["cluster"])
    async def census() -> dict[str, Any]:
        """Every member of every service group, from every host (etcd) or this one: host,
        address, state, health, instances, ports, config version, alive or stale."""
        return facade.census()

    @app.get("/v1/census/{service_group}", tags=["cluster"])
    async def census_group(service_group: str) -> dict[str, Any]:
        """The members of one service group (404 when none is known)."""
        return facade.census(service_group)

    @app.get("/v1/config/{service_group}", tags=["cluster"], responses=_ERRORS)
    async def config_show(service_group: str) -> dict[str, Any]:
        """A service group's config version and merged values, each with its source
        (default, host file, group config); ``${SECRET}`` references as written."""
        return facade.config_show(service_group)

    @app.put("/v1/config/{service_group}", tags=["cluster"], responses=_ERRORS)
    async def config_apply(service_group: str, body: ConfigApplyRequest) -> dict[str, Any]:
        """Store a new version of the group's config (409 unless higher than the current
        one; 422 when this host's process of the group does not render with it)."""
        return await facade.config_apply(service_group, body.version, body.text,
                                         body.format, body.source)

    @app.put("/v1/services/{name}/config", tags=["services"], responses=_ERRORS)
    async def host_config(name: str, body: ValuesFile) -> dict[str, Any]:
        """Set this host's own values for a process (between its defaults and the group
        config); 422 when it does not render with them."""
        return facade.host_config_set(name, body.text, body.format, body.source)

    @app.post("/v1/supervisor/restart", status_code=HTTPStatus.ACCEPTED, tags=["supervisor"])
    async def restart_supervisor() -> dict[str, str]:
        """Start a new supervisor process; services keep running and are reattached."""
        facade.restart_supervisor()
        return {"result": "restarting"}

    @app.post("/v1/supervisor/upgrade", status_code=HTTPStatus.ACCEPTED, tags=["supervisor"])
    async def upgrade_supervisor() -> dict[str, Any]:
        """Upgrade the launcher in place to the installed corral (same pid, services keep
        running), then the supervisor and the balancer.  The installed code is checked
        first: one that fails its check or speaks another protocol major version is
        refused (502, ``launcher_error``) and nothing changes."""
        return await facade.upgrade()

    @app.post("/v1/supervisor/stop", status_code=HTTPStatus.ACCEPTED, tags=["supervisor"])
    async def stop_supervisor() -> dict[str, str]:
        """Stop every service (reverse load order), then the supervisor and the launcher."""
        facade.stop_supervisor()
        return {"result": "stopping"}

    @app.get("/v1/services", tags=["services"], response_class=Response,
             responses={200: {"content": {"application/json": {"schema": {
                 "type": "array", "items": {"type": "object"}}}},
                 "description": "every service's status object"}})
    async def services() -> Response:
        """Every loaded service with its state, pid, restarts, health and instances."""
        # Encoded here, not through FastAPI's response validation and jsonable_encoder:
        # at 1,000 services those took half the time of this, the most polled route.
        return Response(json.dumps(facade.services(), separators=(",", ":")),
                        media_type="application/json")

    @app.post("/v1/services", tags=["services"], responses=_ERRORS)
    async def load(body: LoadRequest, wait: float | None = _WAIT) -> dict[str, Any]:
        """Load a service, or update it (restarting it only if its spec changed).
        With ``wait``, return only once it is ready (or fail after that many seconds)."""
        spec = facade.parse_spec(body.spec, body.yaml, body.source)
        result = await facade.load(spec)
        await facade.wait_ready(spec.name, wait)
        return {"result": result, "service": facade.service(spec.name)}

    @app.get("/v1/services/{name}", tags=["services"], responses=_ERRORS)
    async def service(name: str) -> dict[str, Any]:
        """One service's status."""
        return facade.service(name)

    @app.delete("/v1/services/{name}", tags=["services"], responses=_ERRORS)
    async def unload(name: str) -> dict[str, str]:
        """Stop a service's instances and forget it."""
        await facade.unload(name)
        return {"result": "unloaded"}

    @app.post("/v1/services/{name}/start", tags=["services"], responses=_ERRORS)
    async def start(name: str, wait: float | None = _WAIT) -> dict[str, Any]:
        """Want the service up; returns once its instances are spawned (with ``wait``:
        ready, or fail after that many seconds)."""
        await facade.start(name)
        await facade.wait_ready(name, wait)
        return facade.service(name)

    @app.post("/v1/services/{name}/stop", tags=["services"], responses=_ERRORS)
    async def stop(name: str) -> dict[str, Any]:
        """Want the service down; returns once every instance has stopped."""
        await facade.stop(name)
        return facade.service(name)

    @app.post("/v1/services/{name}/restart", tags=["services"], responses=_ERRORS)
    async def restart(name: str, wait: float | None = _WAIT) -> dict[str, Any]:
        """Stop then start every instance (with ``wait``: until they are ready)."""
        await facade.restart(name)
        await facade.wait_ready(name, wait)
        return facade.service(name)

    @app.post("/v1/services/{name}/reload", tags=["services"], responses=_ERRORS)
    async def reload(name: str) -> dict[str, Any]:
        """Run the reload hook, or send the reload signal, to every running instance."""
        await facade.reload(name)
        return facade.service(name)

    @app.post("/v1/services/{name}/scale", tags=["services"], responses=_ERRORS)
    async def scale(name: str, body: ScaleRequest) -> dict[str, Any]:
        """Change the number of instances without touching those that stay."""
        await facade.scale(name, body.instances)
        return facade.service(name)

    @app.get("/v1/services/{name}/history", tags=["services"], responses=_ERRORS)
    async def history(name: str) -> dict[str, Any]:
        """CPU % and RSS of each instance, one point every 10 s for the last hour."""
        return facade.history(name)

    @app.get("/v1/services/{name}/logs", tags=["logs"], responses=_ERRORS)
    async def logs(request: Request, name: str, n: int = Query(100, ge=0, le=100_000),
                   follow: bool = False,
                   cursor: str | None = Query(None, description=_CURSOR_HELP)) -> Any:
        """The last ``n`` log records; with ``follow=1``, a stream of server-sent events,
        each a batch of records with the cursor after them as its ``id``.  From a cursor
        (``cursor`` or the ``Last-Event-ID`` header) the stream resumes just after it."""
        if not follow:
            return {"lines": facade.log_tail(name, n)}
        resume = cursor or request.headers.get("last-event-id")
        try:
            start = reader.Cursor.parse(resume) if resume else None
        except ValueError as exc:
            return _error(HTTPStatus.BAD_REQUEST, "bad_request", f"cursor: {exc}")
        batches = facade.log_follow(name, n, start)

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for batch in batches:
                    head = f"id: {batch.cursor.token()}\n"
                    if batch.skipped != 0:
                        yield _sse({"skipped": {"bytes": batch.skipped}}, head)
                    if batch.lines:
                        yield _sse({"lines": batch.lines}, head)
                    elif batch.skipped == 0:
                        yield (head + "\n").encode()  # the cursor alone: first, a keepalive
            finally:
                await batches.aclose()  # its files now, not whenever it is collected
        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/events", tags=["events"], responses=_ERRORS)
    async def events(request: Request, n: int = Query(100, ge=0, le=2000),
                     follow: bool = False, service: str | None = None,
                     after: int | None = Query(None, ge=0, description=_AFTER_HELP)) -> Any:
        """Recent events (or those after ``seq`` ``after``); with ``follow=1``, those and
        then new ones as server-sent events whose ``id`` is the ``seq``.  Resuming (from
        ``after`` or the ``Last-Event-ID`` header) starts with ``{"skipped": {"events": N,
        "reason": "..."}}`` when events after it are not kept (N ``null``: unknown)."""
        if after is None and follow and request.headers.get("last-event-id"):
            text = request.headers["last-event-id"].strip()
            if not text.isdigit():
                return _error(HTTPStatus.BAD_REQUEST, "bad_request",
                              f"Last-Event-ID: {text[:40]!r} is not a seq")
            after = int(text)
        lost: int | None = 0
        why = ""
        if after is None:
            recent = facade.events(n, service)
        else:
            recent, lost, why = facade.events_since(after, service)
        if not follow:
            return {"events": recent}
        queue = facade.subscribe()
        marker = facade.last_event_seq()

        async def stream() -> AsyncIterator[bytes]:
            try:
                if lost != 0:
                    yield _sse({"skipped": {"events": lost, "reason": why}})
                for past in recent:
                    yield _sse(past, f"id: {past['seq']}\n")
                # Where the stream stands, whatever the filter let through.
                yield f"id: {marker}\n\n".encode()
                while True:
                    event: dict[str, Any] | None
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if event is None:
                        return  # too slow: dropped; the client reconnects
                    if service is None or event["service"] == service:
                        yield _sse(event, f"id: {event['seq']}\n")
            finally:
                facade.unsubscribe(queue)
        return StreamingResponse(stream(), media_type="text/event-stream")

    app.include_router(metrics_router(facade))
    app.include_router(dashboard_router())
    app.include_router(stores_router(facade))
    app.include_router(target_router(facade))
    app.include_router(auth_routes(remote))
    app.include_router(health_router(facade))
    return app
