"""What wraps every request: a request id, errors as JSON, an access log line, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from common import logs
from gateway.admission import admit, printable
from gateway.errors import HttpError
from gateway.metrics import METRICS
from gateway.routing import REQUEST_ID, json_response

log = structlog.get_logger("gateway.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, message: str | dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """Shaken Fist's error body."""
    response = json_response({"error": message, "status": status}, status)
    response.headers.update(headers or {})
    return response


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, admit it (``gateway.admission``), turn failures into JSON
    errors, log one line, count it."""
    incoming = logs.clean_request_id(request.headers.get("X-Request-ID", ""))
    request_id = incoming or logs.new_request_id()
    request[REQUEST_ID] = request_id
    # aiohttp serves each request in its own task: this binds it for this request only.
    logs.start_request(request_id)
    started = time.perf_counter()
    try:
        await admit(request)
        response = await handler(request)
    except HttpError as exc:
        response = error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason or "request failed")
    except Exception:
        log.exception("unexpected error", method=request.method, path=printable(request.path)[:300])
        response = error_response(500, "internal error in the gateway; see its log")
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    elapsed = time.perf_counter() - started
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.observe(request, response.status, elapsed)
    log.info(
        "request",
        method=printable(request.method)[:20],
        path=printable(request.path)[:300],
        status=response.status,
        ms=round(elapsed * 1000, 2),
        remote=request.remote,
    )
    return response
