"""Server reflection as ``grpc.reflection.v1`` as well as ``v1alpha``.

grpcio-reflection serves only v1alpha, while newer tools (grpcurl, Postman,
grpcui) ask for v1 first. The two versions' messages are the same, field for
field, so v1 is served by passing each request to the v1alpha servicer in
its wire form and each answer back the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

from protos import reflection_v1_pb2, reflection_v1_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

V1_SERVICE_NAME: str = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME


class ReflectionV1(reflection_v1_pb2_grpc.ServerReflectionServicer):
    """The v1 service, answered by grpcio-reflection's v1alpha servicer."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._alpha = reflection.aio.ReflectionServicer(tuple(service_names))

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_v1_pb2.ServerReflectionRequest],
        context: Context,
    ) -> AsyncIterator[reflection_v1_pb2.ServerReflectionResponse]:
        async def as_alpha() -> AsyncIterator[alpha_pb2.ServerReflectionRequest]:
            async for request in request_iterator:
                yield alpha_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

        async for answer in self._alpha.ServerReflectionInfo(as_alpha(), context):
            yield reflection_v1_pb2.ServerReflectionResponse.FromString(answer.SerializeToString())


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for service_names as both v1alpha and v1."""
    names = tuple(service_names)
    reflection.enable_server_reflection(names, server)
    reflection_v1_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionV1(names), server)
