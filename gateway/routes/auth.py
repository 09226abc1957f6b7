"""Authentication (POST /auth) and namespaces with their keys."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from common import forwarded, logs
from gateway import views
from gateway.errors import HttpError
from gateway.fields import NAME_PATTERN, NAMESPACE, Field
from gateway.routing import REQUEST_ID, Call, RouteTable, load_json, read_body
from protos import auth_pb2

table = RouteTable()
# The caller's address, passed on so the control plane slows repeated bad logins per caller.
CLIENT_ADDRESS_KEY = forwarded.ADDRESS_KEY


@dataclass(frozen=True)
class Voucher:
    """The gateway certificate and key it signs the addresses it passes on with."""

    cert: bytes
    key: bytes

    def proof(self, address: str, namespace: str) -> str:
        """What makes the control plane believe address (common.forwarded)."""
        return forwarded.prove(self.cert, self.key, address, namespace, time.time())


# Set at start when the gateway has its certificate (MINICLOUD_GATEWAY_CLIENT_CERT/_KEY).
VOUCHER: web.AppKey[Voucher | None] = web.AppKey("voucher")
# A first key is both key_name and key, or neither.
KEY_PAIR = {
    "anyOf": [
        {
            "required": ["key_name", "key"],
            "properties": {"key_name": {"type": "string"}, "key": {"type": "string"}},
        },
        {"properties": {"key_name": {"enum": [None]}, "key": {"enum": [None]}}},
    ]
}


@table.route(
    "POST",
    "/auth",
    "Trade a namespace and key for a bearer token",
    # Read by the handler itself, with Shaken Fist's messages; declared for the document.
    body=(
        Field("namespace", "str", True),
        Field("key", "str", True, rules={"minLength": 1}),
    ),
    body_kind="raw",
    public=True,
)
async def authenticate(call: Call) -> Any:
    body = load_json(await read_body(call.request, call.settings.max_json_bytes))
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - {"namespace", "key"})
    if unknown:
        raise HttpError(400, f"unexpected field(s) in request: {', '.join(unknown)}"[:300])
    if "namespace" not in body:
        raise HttpError(400, "missing namespace in request")
    if not isinstance(body["namespace"], str) or not body["namespace"]:
        raise HttpError(404, "namespace not found")
    if "key" not in body:
        raise HttpError(400, "missing key in request")
    if not isinstance(body["key"], str):
        raise HttpError(400, "key is not a string")
    request = auth_pb2.TokenRequest(namespace=body["namespace"], key=body["key"])
    address = call.request.remote or ""
    metadata: tuple[tuple[str, str], ...] = (
        (logs.REQUEST_ID_KEY, call.request[REQUEST_ID]),
        (CLIENT_ADDRESS_KEY, address),
    )
    voucher = call.request.app.get(VOUCHER)
    if voucher is not None and address:
        metadata += ((forwarded.PROOF_KEY, voucher.proof(address, body["namespace"])),)
    try:
        token = await call.api.auth.Token(
            request, metadata=metadata, timeout=call.settings.call_timeout
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise HttpError(404, "namespace not found") from exc
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            details = exc.details() or ""
            throttled = details.startswith("too many failed logins")
            raise HttpError(401, details if throttled else "unauthorized") from exc
        raise
    return {
        "access_token": token.access_token,
        "token_type": token.token_type or "Bearer",
        "expires_in": token.expires_in,
    }


@table.route("GET", "/auth/namespaces", "The namespaces visible to the caller")
async def list_namespaces(call: Call) -> Any:
    found = await call.rpc(call.api.namespaces.List, auth_pb2.ListNamespacesRequest())
    return [views.namespace(n) for n in found.namespaces]


@table.route(
    "POST",
    "/auth/namespaces",
    "Create a namespace (system only), optionally with a first key",
    body=(
        Field("namespace", "str", True, rules=NAMESPACE),
        Field("key_name", "str", rules={"pattern": NAME_PATTERN}),
        Field("key", "str", rules={"minLength": 1, "maxLength": 1024}),
    ),
    overrides={"ALREADY_EXISTS": 403},
    body_rules=KEY_PAIR,
)
async def create_namespace(call: Call) -> Any:
    request = auth_pb2.CreateNamespaceRequest(
        name=call.body["namespace"],
        key_name=call.body.get("key_name", ""),
        key=call.body.get("key", ""),
    )
    return views.namespace(await call.rpc(call.api.namespaces.Create, request))


@table.route("GET", "/auth/namespaces/{namespace}", "A namespace")
async def get_namespace(call: Call) -> Any:
    ref = auth_pb2.NamespaceRef(name=call.param("namespace"))
    return views.namespace(await call.rpc(call.api.namespaces.Get, ref))


@table.route(
    "DELETE",
    "/auth/namespaces/{namespace}",
    "Delete a namespace (system only; not while it holds instances)",
    # Shaken Fist answers 400; a namespace holding instances is a state conflict (409).
    overrides={"FAILED_PRECONDITION": 409},
)
async def delete_namespace(call: Call) -> Any:
    if call.param("namespace") == "system":
        raise HttpError(403, "you cannot delete the system namespace")
    ref = auth_pb2.NamespaceRef(name=call.param("namespace"))
    await call.rpc(call.api.namespaces.Delete, ref)
    return None


@table.route("GET", "/auth/namespaces/{namespace}/keys", "A namespace's key names")
async def key_names(call: Call) -> Any:
    ref = auth_pb2.NamespaceRef(name=call.param("namespace"))
    found = await call.rpc(call.api.namespaces.Get, ref)
    return list(found.keys)


async def _add_key(call: Call, key_name: str) -> Any:
    if key_name.startswith("_service_key"):
        raise HttpError(403, "illegal key name")
    request = auth_pb2.AddKeyRequest(
        namespace=call.param("namespace"), key_name=key_name, key=call.body["key"]
    )
    await call.rpc(call.api.namespaces.AddKey, request)
    return key_name


@table.route(
    "POST",
    "/auth/namespaces/{namespace}/keys",
    "Add (or replace) a key; returns its name",
    body=(
        Field("key_name", "str", True, rules={"pattern": NAME_PATTERN}),
        Field("key", "str", True, rules={"minLength": 1, "maxLength": 1024}),
    ),
)
async def add_key(call: Call) -> Any:
    return await _add_key(call, call.body["key_name"])


@table.route(
    "PUT",
    "/auth/namespaces/{namespace}/keys",
    "Replace a key named in the body; returns its name (shakenfist-client's update-key)",
    body=(
        Field("key_name", "str", True, rules={"pattern": NAME_PATTERN}),
        Field("key", "str", True, rules={"minLength": 1, "maxLength": 1024}),
    ),
)
async def update_key_by_body(call: Call) -> Any:
    return await _add_key(call, call.body["key_name"])


@table.route(
    "PUT",
    "/auth/namespaces/{namespace}/keys/{key_name}",
    "Replace a key; returns its name",
    body=(Field("key", "str", True, rules={"minLength": 1, "maxLength": 1024}),),
)
async def update_key(call: Call) -> Any:
    return await _add_key(call, call.param("key_name"))


@table.route(
    "DELETE",
    "/auth/namespaces/{namespace}/keys/{key_name}",
    "Delete a key (tokens minted with it stop working)",
)
async def delete_key(call: Call) -> Any:
    request = auth_pb2.DeleteKeyRequest(
        namespace=call.param("namespace"), key_name=call.param("key_name")
    )
    await call.rpc(call.api.namespaces.DeleteKey, request)
    return None


@table.route(
    "POST",
    "/auth/namespaces/{namespace}/trust",
    "Trust another namespace: it then sees this namespace's artifacts and may use them as"
    " disk bases (system, or the namespace itself)",
    body=(Field("external_namespace", "str", True, rules=NAMESPACE),),
)
async def trust_namespace(call: Call) -> Any:
    request = auth_pb2.TrustRequest(
        namespace=call.param("namespace"), trusted=call.body["external_namespace"]
    )
    return views.namespace(await call.rpc(call.api.namespaces.Trust, request))


@table.route(
    "DELETE",
    "/auth/namespaces/{namespace}/trust/{external_namespace}",
    "Stop trusting a namespace",
)
async def untrust_namespace(call: Call) -> Any:
    request = auth_pb2.TrustRequest(
        namespace=call.param("namespace"), trusted=call.param("external_namespace")
    )
    return views.namespace(await call.rpc(call.api.namespaces.Untrust, request))
