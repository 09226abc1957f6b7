"""The MetadataService over gRPC: JSON values in and out as protobuf Struct/Value."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.convert import dict_to_struct, value_to_python
from controlplane.api.status import grpc_errors, namespace_of
from controlplane.errors import InvalidArgument
from controlplane.model import JsonDict
from controlplane.services.metadata import MetadataService
from protos import metadata_pb2, metadata_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def metadata_to_pb(metadata: JsonDict) -> metadata_pb2.Metadata:
    """Metadata for the wire."""
    pb = metadata_pb2.Metadata()
    dict_to_struct(metadata, pb.metadata)
    pb.metadata.SetInParent()
    return pb


class MetadataServicer(metadata_pb2_grpc.MetadataServiceServicer):
    """gRPC face of the metadata use cases."""

    def __init__(self, service: MetadataService) -> None:
        self.service = service

    @grpc_errors
    async def Get(
        self, request: metadata_pb2.MetadataRef, context: Context
    ) -> metadata_pb2.Metadata:
        found = await self.service.get(namespace_of(context), request.object_type, request.ref)
        return metadata_to_pb(found)

    @grpc_errors
    async def Set(
        self, request: metadata_pb2.SetMetadataRequest, context: Context
    ) -> metadata_pb2.Metadata:
        if not request.HasField("value") or request.value.WhichOneof("kind") is None:
            raise InvalidArgument("a metadata value is required")
        value = value_to_python(request.value)
        found = await self.service.set(
            namespace_of(context), request.object_type, request.ref, request.key, value
        )
        return metadata_to_pb(found)

    @grpc_errors
    async def Delete(
        self, request: metadata_pb2.DeleteMetadataRequest, context: Context
    ) -> metadata_pb2.Metadata:
        found = await self.service.delete(
            namespace_of(context), request.object_type, request.ref, request.key
        )
        return metadata_to_pb(found)
