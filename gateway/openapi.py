"""The OpenAPI 3 document, generated from the route table.

It states what the gateway enforces (each field's type, bounds, enums and
patterns come from the same ``Field`` declarations the handlers check), so a
request valid by the document is never refused as malformed, and it lists
every status a route may answer, 5xx included.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.routing import PATH_PARAMS, Route

PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
ERROR = {
    "type": "object",
    "properties": {
        "error": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "status": {"type": "integer"},
    },
}
# status -> what it means here (Shaken Fist's meanings; see docs/rest.md).
STATUSES: dict[int, str] = {
    400: "malformed request: the message says what is wrong",
    401: "no valid bearer token (checked before anything else), or administrator only",
    403: "not allowed (e.g. deleting the system namespace or a network in use)",
    404: "no such object, no such path, or a Shaken Fist route this gateway does not implement",
    405: "method not allowed on this path (see the Allow header)",
    406: "not ready yet: retry (Shaken Fist's client retries by itself)",
    409: "conflict with the object's current state, or a name already taken",
    413: "request body too large",
    501: "not implemented by this control plane",
    503: "the control plane is unavailable or cannot check the token: retry later",
    507: "insufficient resources (no node has room, or an address pool is exhausted)",
}
PUBLIC_STATUSES = {
    "/": (405,),
    "/openapi.json": (405,),
    "/healthz": (405,),
    "/readyz": (405, 503),
    "/auth": (400, 401, 404, 405, 413, 501, 503),
}


def _statuses(route: Route) -> tuple[int, ...]:
    if route.public:
        return PUBLIC_STATUSES.get(route.path, (405,))
    codes = set(STATUSES) - {413}
    if route.body or route.body_kind == "raw":
        codes.add(413)
    return tuple(sorted(codes))


def _responses(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "success", "content": {route.produces: {}}}}
    for code in _statuses(route):
        out[str(code)] = {
            "description": STATUSES[code],
            "content": {"application/json": {"schema": ERROR}},
        }
    return out


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": PATH_PARAMS.get(name, {"type": "string", "minLength": 1}),
    }


def _operation_id(route: Route) -> str:
    """Unique per method and path (handlers made per object type share a name)."""
    words = re.findall(r"[A-Za-z0-9]+", PARAM.sub(r"\1", route.path))
    return "_".join([route.method.lower(), *words]) if words else f"{route.method.lower()}_root"


def document(routes: list[Route]) -> dict[str, Any]:
    """An OpenAPI 3.0 document describing every route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = PARAM.sub(r"{\1}", route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
            "tags": [route.path.strip("/").split("/")[0] or "root"],
            "parameters": [_path_param(name) for name in PARAM.findall(route.path)]
            + [
                {"name": f.name, "in": "query", "required": f.required, "schema": f.schema()}
                for f in route.query
            ],
            "responses": _responses(route),
        }
        if route.body:
            operation["requestBody"] = {
                "required": any(f.required for f in route.body) or bool(route.body_rules),
                "content": {"application/json": {"schema": route.body_schema()}},
            }
        elif route.body_kind == "raw" and not route.public:
            operation["requestBody"] = {
                "content": {"application/octet-stream": {"schema": {"type": "string"}}}
            }
        if not route.public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "minicloud Shaken Fist REST gateway",
            "version": "0.1.0",
            "description": "Shaken Fist's REST API (as shakenfist-client 0.8.3 uses it), "
            "translated to minicloud's gRPC API. Request parameters travel as JSON "
            "bodies, also on GET and DELETE. Every path but /, /auth, /openapi.json, "
            "/healthz and /readyz needs a bearer token, checked before anything else "
            "(401); then an unknown path is 404, a Shaken Fist route not implemented "
            "here is 404, a wrong method is 405 (with Allow); only then is the body "
            "read and validated.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
