"""Authentication over gRPC: the token and namespace services, and the interceptor.

Every call but the public ones (token minting, health, reflection) must carry
``authorization: Bearer <token>``. The interceptor checks the token, resolves
the namespace the call acts in (``x-namespace`` lets system act elsewhere),
and hands it to the servicers through ``controlplane.api.status.CALLER``.
Calls it refuses end with UNAUTHENTICATED (or PERMISSION_DENIED for the node
stream, which only the system namespace may open) before any servicer runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog

from common import forwarded, logs, pki
from controlplane.api.decoding import lenient
from controlplane.api.status import (
    AUTHENTICATED,
    AUTHORIZATION_KEY,
    CALLER,
    NAMESPACE_KEY,
    grpc_errors,
    metadata_value,
    namespace_of,
)
from controlplane.errors import MiniCloudError, message_of, status_of
from controlplane.services.certificates import CertificateService
from controlplane.services.instances import InstanceService
from controlplane.services.namespaces import NamespaceService, require_system
from controlplane.store.namespaces import Namespace
from controlplane.tokens import bearer
from protos import auth_pb2, auth_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

PUBLIC_PREFIXES = (
    "/minicloud.v1.AuthService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
)
SYSTEM_ONLY_PREFIXES = ("/minicloud.v1.NodeService/",)


def namespace_to_pb(ns: Namespace) -> auth_pb2.Namespace:
    """A namespace as its API message (key names only)."""
    return auth_pb2.Namespace(
        name=ns.name,
        state=ns.state,
        keys=sorted(ns.keys),
        created_at=ns.created_at,
        version=ns.version,
        trusted=list(ns.trusted),
    )


CLIENT_ADDRESS_KEY = forwarded.ADDRESS_KEY
MAX_ADDRESS_LENGTH = 64
log = structlog.get_logger(__name__)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:..."), or ""."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def caller_address(peer: str, context: Any, trusted: frozenset[str]) -> str:
    """Without TLS: the peer's address, or the address a trusted proxy passes on.

    The REST gateway sends its caller's address in ``x-minicloud-client-address``;
    without TLS it is believed only from a peer listed in ``trusted_proxies``.
    """
    host = peer_host(peer)
    if host in trusted:
        passed = metadata_value(context, CLIENT_ADDRESS_KEY)
        if passed and len(passed) <= MAX_ADDRESS_LENGTH and passed.isprintable():
            return passed
    return host


class ProxyTrust:
    """With TLS, whose forwarded address is believed: a current, unrevoked gateway
    certificate of the cluster's CA that signed it (``common.forwarded``). Any other
    forwarded address is ignored (logged): the login counts against the peer itself."""

    def __init__(
        self,
        ca_pem: bytes,
        certificates: CertificateService,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca_pem = ca_pem
        self.certificates = certificates
        self.clock = clock

    async def caller(self, context: Any, namespace: str) -> str:
        """Who is logging in into namespace."""
        host = peer_host(context.peer())
        passed = metadata_value(context, CLIENT_ADDRESS_KEY)
        if not passed:
            return host
        if len(passed) > MAX_ADDRESS_LENGTH or not passed.isprintable():
            return host
        proof = metadata_value(context, forwarded.PROOF_KEY)
        try:
            gateway = forwarded.check(proof, passed, namespace, self.ca_pem, self.clock())
            if await self.certificates.is_revoked(gateway.serial):
                raise pki.PkiError(f"gateway {gateway.name}'s certificate is revoked")
        except pki.PkiError as exc:
            log.warning(
                "ignoring a forwarded client address: no gateway certificate vouches for it",
                peer=host,
                error=str(exc),
            )
            return host
        return passed


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Trades a namespace and key for a token."""

    def __init__(
        self,
        namespaces: NamespaceService,
        trusted_proxies: tuple[str, ...] = (),
        proxies: ProxyTrust | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.trusted_proxies = frozenset(trusted_proxies)
        # With TLS: only a gateway's certificate passes an address on (trusted_proxies unused).
        self.proxies = proxies

    @grpc_errors
    async def Token(
        self, request: auth_pb2.TokenRequest, context: Context
    ) -> auth_pb2.TokenResponse:
        if self.proxies is not None:
            client = await self.proxies.caller(context, request.namespace)
        else:
            client = caller_address(context.peer(), context, self.trusted_proxies)
        token, ttl = await self.namespaces.token(request.namespace, request.key, client)
        return auth_pb2.TokenResponse(access_token=token, token_type="Bearer", expires_in=ttl)


class NamespaceServicer(auth_pb2_grpc.NamespaceServiceServicer):
    """Namespace and key management."""

    def __init__(self, namespaces: NamespaceService, instances: InstanceService) -> None:
        self.namespaces = namespaces
        self.instances = instances

    @grpc_errors
    async def Create(
        self, request: auth_pb2.CreateNamespaceRequest, context: Context
    ) -> auth_pb2.Namespace:
        ns = await self.namespaces.create(
            namespace_of(context), request.name, request.key_name, request.key
        )
        return namespace_to_pb(ns)

    @grpc_errors
    async def Get(self, request: auth_pb2.NamespaceRef, context: Context) -> auth_pb2.Namespace:
        return namespace_to_pb(self.namespaces.get(namespace_of(context), request.name))

    @grpc_errors
    async def List(
        self, request: auth_pb2.ListNamespacesRequest, context: Context
    ) -> auth_pb2.ListNamespacesResponse:
        found = self.namespaces.list_all(namespace_of(context))
        return auth_pb2.ListNamespacesResponse(namespaces=[namespace_to_pb(n) for n in found])

    @grpc_errors
    async def Delete(self, request: auth_pb2.NamespaceRef, context: Context) -> auth_pb2.Namespace:
        caller = namespace_of(context)
        require_system(caller, "delete namespaces")
        live = await self.instances.list_all(request.name)
        ns = await self.namespaces.delete(caller, request.name, len(live))
        return namespace_to_pb(ns)

    @grpc_errors
    async def AddKey(self, request: auth_pb2.AddKeyRequest, context: Context) -> auth_pb2.Namespace:
        ns = await self.namespaces.add_key(
            namespace_of(context), request.namespace, request.key_name, request.key
        )
        return namespace_to_pb(ns)

    @grpc_errors
    async def DeleteKey(
        self, request: auth_pb2.DeleteKeyRequest, context: Context
    ) -> auth_pb2.Namespace:
        ns = await self.namespaces.delete_key(
            namespace_of(context), request.namespace, request.key_name
        )
        return namespace_to_pb(ns)

    @grpc_errors
    async def Trust(self, request: auth_pb2.TrustRequest, context: Context) -> auth_pb2.Namespace:
        ns = await self.namespaces.trust(namespace_of(context), request.namespace, request.trusted)
        return namespace_to_pb(ns)

    @grpc_errors
    async def Untrust(self, request: auth_pb2.TrustRequest, context: Context) -> auth_pb2.Namespace:
        ns = await self.namespaces.untrust(
            namespace_of(context), request.namespace, request.trusted
        )
        return namespace_to_pb(ns)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token; tells servicers whose call it is."""

    def __init__(self, namespaces: NamespaceService) -> None:
        self.namespaces = namespaces

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        if method.startswith(SYSTEM_ONLY_PREFIXES):
            # A node's stream lives for hours and serves no one request.
            structlog.contextvars.clear_contextvars()
        else:
            incoming = logs.clean_request_id(
                metadata_value(handler_call_details, logs.REQUEST_ID_KEY)
            )
            logs.start_request(incoming or logs.new_request_id(), rpc=method.rsplit("/", 1)[-1])
        if method.startswith(PUBLIC_PREFIXES):
            CALLER.set("")
            AUTHENTICATED.set("")
            return lenient(await continuation(handler_call_details))
        try:
            token = bearer(metadata_value(handler_call_details, AUTHORIZATION_KEY))
            caller = self.namespaces.authenticate(token)
            if method.startswith(SYSTEM_ONLY_PREFIXES):
                require_system(caller, "open a node stream")
            acting = self.namespaces.acting_as(
                caller, metadata_value(handler_call_details, NAMESPACE_KEY)
            )
        except MiniCloudError as exc:
            return lenient(_refusal(await continuation(handler_call_details), exc))
        CALLER.set(acting)
        AUTHENTICATED.set(caller)
        logs.bind(namespace=acting)
        return lenient(await continuation(handler_call_details))


def _refusal(handler: Handler | None, error: MiniCloudError) -> Handler | None:
    """A handler of the same shape as handler that ends the call with error's status."""
    if handler is None:
        return None
    code = getattr(grpc.StatusCode, status_of(error)[0])
    message = message_of(error)

    async def refuse_unary(request: Any, context: Context) -> Any:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    streaming = handler.response_streaming
    make: Any = kinds[(handler.request_streaming, streaming)]
    refusal: Handler = make(
        refuse_stream if streaming else refuse_unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return refusal
