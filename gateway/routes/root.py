"""The public root (capability tokens) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.capabilities import root_page
from gateway.errors import HttpError
from gateway.routing import Call, RouteTable

table = RouteTable()
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


@table.route("GET", "/", "Capability tokens (public)", public=True, produces="text/html")
async def root(call: Call) -> Any:
    return web.Response(text=root_page(), content_type="text/html")


@table.route("GET", "/openapi.json", "This API's OpenAPI document (public)", public=True)
async def openapi(call: Call) -> Any:
    return call.request.app[OPENAPI]


@table.route("GET", "/healthz", "The gateway is alive (public)", public=True)
async def healthz(call: Call) -> Any:
    return {"status": "ok"}


@table.route(
    "GET",
    "/readyz",
    "The gateway can reach a serving control plane (public; 503 if not)",
    public=True,
)
async def readyz(call: Call) -> Any:
    if not await call.api.ready():
        raise HttpError(503, "the control plane is not reachable or not serving")
    return {"status": "ready"}
