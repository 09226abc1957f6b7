"""Authentication on the node listener: a node agent is who its client certificate says.

TLS has already required a certificate issued by the cluster's CA. Before any
servicer runs, ``NodeCertInterceptor`` checks it is a current node certificate
(``common.pki.node_name``) whose serial is not revoked (read from the store
on every call, so every control plane refuses it at once), then tells the
servicer which node is calling through ``NODE_IDENTITY``; the call acts as
the system namespace. A refused call ends with UNAUTHENTICATED.
"""

from __future__ import annotations

import contextvars
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from common import pki
from controlplane.api.auth import Context, Handler
from controlplane.api.status import CALLER
from controlplane.services.certificates import CertificateService
from controlplane.services.namespaces import SYSTEM

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeIdentity:
    """The node a call comes from, and the serial of its certificate."""

    name: str
    serial: int


# Set for calls on the node listener; None on the public one.
NODE_IDENTITY: contextvars.ContextVar[NodeIdentity | None] = contextvars.ContextVar(
    "node_identity", default=None
)


class Refused(Exception):
    """The peer's certificate may not be used (the message says why)."""


class NodeCertInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so it first checks the caller's node certificate."""

    def __init__(
        self,
        ca_pem: bytes,
        certificates: CertificateService,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.ca_pem = ca_pem
        self.certificates = certificates
        self.now = now

    async def identify(self, context: Context) -> NodeIdentity:
        """The calling node, or Refused."""
        found = context.auth_context().get("x509_pem_cert")
        if not found:
            raise Refused("a node certificate is required")
        pem = bytes(next(iter(found)))
        try:
            name = pki.node_name(pem, self.ca_pem, self.now())
            serial = pki.info(pem).serial
        except pki.PkiError as exc:
            raise Refused(str(exc)) from None
        if await self.certificates.is_revoked(serial):
            raise Refused(f"the certificate of node {name} (serial {serial}) is revoked")
        return NodeIdentity(name, serial)

    async def _admit(self, context: Context) -> None:
        try:
            identity = await self.identify(context)
        except Refused as exc:
            log.warning("node certificate refused", peer=context.peer(), error=str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        NODE_IDENTITY.set(identity)
        CALLER.set(SYSTEM)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        structlog.contextvars.clear_contextvars()
        handler = await continuation(handler_call_details)
        return None if handler is None else _guarded(handler, self._admit)


def _guarded(handler: Handler, admit: Callable[[Context], Awaitable[None]]) -> Handler:
    """The same handler, calling admit(context) before its behaviour."""
    options: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary: Any = handler.unary_unary

        async def uu(request: Any, context: Context) -> Any:
            await admit(context)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, **options)
    if handler.unary_stream is not None:
        unary_stream: Any = handler.unary_stream

        async def us(request: Any, context: Context) -> AsyncIterator[Any]:
            await admit(context)
            async for reply in unary_stream(request, context):
                yield reply

        return grpc.unary_stream_rpc_method_handler(us, **options)
    if handler.stream_unary is not None:
        stream_unary: Any = handler.stream_unary

        async def su(requests: Any, context: Context) -> Any:
            await admit(context)
            return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(su, **options)
    stream_stream: Any = handler.stream_stream
    assert stream_stream is not None

    async def ss(requests: Any, context: Context) -> AsyncIterator[Any]:
        await admit(context)
        async for reply in stream_stream(requests, context):
            yield reply

    return grpc.stream_stream_rpc_method_handler(ss, **options)
