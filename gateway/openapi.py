"""The OpenAPI 3 document, generated from the route table."""

from __future__ import annotations

import re
from typing import Any

from gateway.fields import KINDS, schema
from gateway.routing import Route

PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            }
        }
    },
}


def document(routes: list[Route]) -> dict[str, Any]:
    """An OpenAPI 3.0 document describing every route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = PARAM.sub(r"{\1}", route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "tags": [route.path.strip("/").split("/")[0] or "root"],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in PARAM.findall(route.path)
            ]
            + [
                {"name": f.name, "in": "query", "required": f.required, "schema": KINDS[f.kind]}
                for f in route.query
            ],
            "responses": {
                "200": {"description": "success", "content": {route.produces: {}}},
                "default": ERROR,
            },
        }
        if route.body:
            operation["requestBody"] = {
                "required": any(f.required for f in route.body),
                "content": {"application/json": {"schema": schema(route.body)}},
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
            "bodies, also on GET and DELETE.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
