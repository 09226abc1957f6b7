"""The ArtifactService over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.status import grpc_errors, namespace_of
from controlplane.errors import InvalidArgument
from controlplane.model import Artifact
from controlplane.services.artifacts import ArtifactService
from protos import artifacts_pb2, artifacts_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def artifact_to_pb(art: Artifact) -> artifacts_pb2.Artifact:
    """An artifact for the wire."""
    return artifacts_pb2.Artifact(
        uuid=art.uuid,
        namespace=art.namespace,
        type=art.type,
        name=art.name,
        state=art.state,
        source_url=art.source_url,
        blob_uuid=art.blob_uuid,
        versions=[
            artifacts_pb2.ArtifactVersion(
                index=int(v["index"]),
                blob_uuid=str(v["blob_uuid"]),
                created_at=float(v["created_at"]),
            )
            for v in art.versions
        ],
    )


class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    """gRPC face of artifacts."""

    def __init__(self, service: ArtifactService) -> None:
        self.service = service

    @grpc_errors
    async def Upload(
        self, request_iterator: AsyncIterator[artifacts_pb2.ArtifactUploadChunk], context: Context
    ) -> artifacts_pb2.Artifact:
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("part") != "name":
            raise InvalidArgument("the first message of an artifact upload must name it")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in iterator:
                yield message.data

        art = await self.service.upload(namespace_of(context), first.name, chunks())
        return artifact_to_pb(art)

    @grpc_errors
    async def FromBlob(
        self, request: artifacts_pb2.FromBlobRequest, context: Context
    ) -> artifacts_pb2.Artifact:
        art = await self.service.from_blob(
            namespace_of(context),
            request.name,
            request.blob_uuid,
            request.type,
            request.source_url,
        )
        return artifact_to_pb(art)

    @grpc_errors
    async def GetArtifact(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.Artifact:
        return artifact_to_pb(await self.service.get(namespace_of(context), request.ref))

    @grpc_errors
    async def ListArtifacts(
        self, request: artifacts_pb2.ListArtifactsRequest, context: Context
    ) -> artifacts_pb2.ListArtifactsResponse:
        found = await self.service.list_all(namespace_of(context))
        return artifacts_pb2.ListArtifactsResponse(artifacts=[artifact_to_pb(a) for a in found])
