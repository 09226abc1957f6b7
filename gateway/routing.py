"""The route table: each REST route, its body fields, and the call context handlers get.

A handler receives a ``Call`` and returns a JSON-able value (sent as 200 JSON,
``None`` as ``null``), a ``Reply`` (another success status), or an aiohttp
response (raw bytes, text, streams). Failed gRPC calls become HTTP errors
through ``errors.from_rpc``, with per-route overrides. The same table builds
the aiohttp router and the OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from common import logs
from gateway.backend import Backend
from gateway.errors import HttpError, from_rpc
from gateway.fields import MAX_DEPTH, Field, check_json, parse, schema
from gateway.settings import GatewaySettings

BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
SETTINGS: web.AppKey[GatewaySettings] = web.AppKey("settings", GatewaySettings)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
NAMESPACE_KEY = "x-namespace"
UUID_CHARS = set("0123456789abcdef-")
MAX_METADATA = 4096
NAME = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Path parameter name -> its schema in the OpenAPI document (others: a non-empty string).
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "hash": {"type": "string", "pattern": "^[0-9a-fA-F]{128}$"},
    "offset": {"type": "string", "pattern": "^[0-9]{1,15}$"},
    "namespace": {"type": "string", "pattern": NAME},
    "key_name": {"type": "string", "pattern": NAME},
    "key": {"type": "string", "minLength": 1, "maxLength": 255},
    "name": {"type": "string", "pattern": NAME},
    # An artifact's version index.
    "version": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"},
}


def metadata_value(value: str, what: str) -> str:
    """value if gRPC accepts it as call metadata (printable ASCII), else a 400 naming what."""
    if not value.isascii() or not value.isprintable() or len(value) > MAX_METADATA:
        raise HttpError(400, f"{what} must be at most {MAX_METADATA} printable ASCII characters")
    return value


@dataclass(frozen=True)
class Reply:
    """A JSON answer with a success status other than 200 (Shaken Fist uses 202)."""

    value: Any
    status: int = 202


@dataclass
class Call:
    """One request as a handler sees it: parsed body, path parameters, the stubs."""

    request: web.Request
    api: Backend
    settings: GatewaySettings
    body: dict[str, Any]

    def param(self, name: str) -> str:
        """A path parameter."""
        return self.request.match_info[name]

    def uuid_param(self, name: str, what: str) -> str:
        """A path parameter that must be a UUID (400 otherwise)."""
        value = self.param(name).lower()
        if len(value) != 36 or not set(value) <= UUID_CHARS or value.count("-") != 4:
            raise HttpError(400, f"{what} {self.param(name)[:80]!r} is not a UUID")
        return value

    def metadata(self, namespace: str | None = None) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata: the caller's token, the request id, a namespace to act in."""
        out = []
        auth = self.request.headers.get("Authorization")
        if auth:
            out.append(("authorization", metadata_value(auth.strip(), "the Authorization header")))
        out.append((logs.REQUEST_ID_KEY, self.request[REQUEST_ID]))
        if namespace:
            out.append((NAMESPACE_KEY, metadata_value(namespace, "namespace")))
        return tuple(out)

    async def rpc(self, method: Any, message: Any, namespace: str | None = None) -> Any:
        """Call a unary gRPC method with the caller's metadata and the deadline."""
        return await method(
            message, metadata=self.metadata(namespace), timeout=self.settings.call_timeout
        )


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """One REST route."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: tuple[Field, ...] = ()
    # "json" bodies are parsed against ``body``; "raw" ones (upload chunks) are not.
    body_kind: str = "json"
    query: tuple[Field, ...] = ()
    # gRPC status name -> HTTP status, where Shaken Fist answers differently.
    overrides: dict[str, int] = field(default_factory=dict)
    public: bool = False
    # Media type of a success answer.
    produces: str = "application/json"

    # JSON-schema keywords across the body's fields (anyOf), stated in the document.
    body_rules: dict[str, Any] = field(default_factory=dict)

    def body_schema(self) -> dict[str, Any]:
        """The JSON schema of this route's body."""
        return {**schema(self.body), **self.body_rules}


class RouteTable:
    """Routes declared with a decorator, in order."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self, method: str, path: str, summary: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        """Declare a handler for METHOD PATH."""

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, path, handler, summary, **options))
            return handler

        return register


async def read_body(request: web.Request, limit: int, what: str = "a request body") -> bytes:
    """The whole request body, or 413 as soon as it is known to exceed limit bytes."""
    too_big = HttpError(413, f"{what} may be at most {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    parts, size = [], 0
    while chunk := await request.content.read(min(1 << 20, limit + 1 - size)):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_big
    return b"".join(parts)


def load_json(raw: bytes) -> Any:
    """A request body's JSON value (None when empty), or a 400 saying what is wrong with it."""
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise HttpError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}"[:300]) from exc
    check_json(value)
    return value


async def _json_body(request: web.Request, limit: int) -> Any:
    return load_json(await read_body(request, limit))


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def aiohttp_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler running a route: body checks, the handler, error mapping."""

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        settings = app[SETTINGS]
        body: dict[str, Any] = {}
        if route.body_kind == "json":
            body = parse(await _json_body(request, settings.max_json_bytes), route.body)
        call = Call(request, app[BACKEND], settings, body)
        try:
            result = await route.handler(call)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc(exc, route.overrides) from exc
        except (ValueError, TypeError, OverflowError) as exc:
            # A value protobuf cannot hold (an integer out of range, a wrong type
            # deep in a body): the caller's mistake, never a 500.
            raise HttpError(400, f"a value in the request cannot be used: {exc}"[:300]) from exc
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Reply):
            return json_response(result.value, result.status)
        return json_response(result)

    return handle
