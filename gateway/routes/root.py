"""The public root (capability tokens) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.capabilities import root_page
from gateway.routing import Call, RouteTable

table = RouteTable()
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


@table.route("GET", "/", "Capability tokens (public)", public=True, produces="text/html")
async def root(call: Call) -> Any:
    return web.Response(text=root_page(), content_type="text/html")


@table.route("GET", "/openapi.json", "This API's OpenAPI document (public)", public=True)
async def openapi(call: Call) -> Any:
    return call.request.app[OPENAPI]
