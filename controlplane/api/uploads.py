"""The UploadService over gRPC."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.artifacts import artifact_to_pb
from controlplane.api.status import grpc_errors, namespace_of
from controlplane.model import Upload
from controlplane.services.uploads import UploadService
from protos import artifacts_pb2, uploads_pb2, uploads_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def upload_to_pb(found: tuple[Upload, int]) -> uploads_pb2.Upload:
    """An upload and its size for the wire."""
    upload, size = found
    return uploads_pb2.Upload(
        uuid=upload.uuid,
        namespace=upload.namespace,
        node=upload.node,
        state=upload.state,
        size=size,
        created_at=upload.created_at,
    )


class UploadServicer(uploads_pb2_grpc.UploadServiceServicer):
    """gRPC face of uploads."""

    def __init__(self, service: UploadService) -> None:
        self.service = service

    @grpc_errors
    async def Create(
        self, request: uploads_pb2.CreateUploadRequest, context: Context
    ) -> uploads_pb2.Upload:
        return upload_to_pb(await self.service.create(namespace_of(context)))

    @grpc_errors
    async def Get(self, request: uploads_pb2.UploadRef, context: Context) -> uploads_pb2.Upload:
        return upload_to_pb(await self.service.get(namespace_of(context), request.uuid))

    @grpc_errors
    async def Append(
        self, request: uploads_pb2.AppendRequest, context: Context
    ) -> uploads_pb2.Upload:
        found = await self.service.append(namespace_of(context), request.uuid, request.data)
        return upload_to_pb(found)

    @grpc_errors
    async def Truncate(
        self, request: uploads_pb2.TruncateRequest, context: Context
    ) -> uploads_pb2.Upload:
        found = await self.service.truncate(namespace_of(context), request.uuid, request.size)
        return upload_to_pb(found)

    @grpc_errors
    async def ToArtifact(
        self, request: uploads_pb2.ToArtifactRequest, context: Context
    ) -> artifacts_pb2.Artifact:
        art = await self.service.to_artifact(
            namespace_of(context), request.upload_uuid, request.name, request.source_url
        )
        return artifact_to_pb(self.service.artifacts.view(art))
