"""The ArtifactService over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.convert import event_to_pb
from controlplane.api.status import grpc_errors, namespace_of
from controlplane.errors import InvalidArgument
from controlplane.model import Artifact, JsonDict
from controlplane.services.artifacts import ArtifactService
from controlplane.services.urlcache import UrlCache
from protos import artifacts_pb2, artifacts_pb2_grpc, instances_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def artifact_to_pb(art: Artifact) -> artifacts_pb2.Artifact:
    """An artifact for the wire (its maximum of versions as the service filled it in)."""
    return artifacts_pb2.Artifact(
        max_versions=art.max_versions,
        index=art.last_index,
        shared=art.shared,
        error=art.error,
        fetch=_fetch_to_pb(art.fetch) if art.fetch else None,
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


def _fetch_to_pb(fetch: JsonDict) -> artifacts_pb2.ArtifactFetch:
    return artifacts_pb2.ArtifactFetch(
        url=str(fetch.get("url", "")),
        state=str(fetch.get("state", "")),
        fetched=int(fetch.get("fetched", 0)),
        size=int(fetch.get("size", 0)),
        error=str(fetch.get("error", "")),
        started_at=float(fetch.get("started_at", 0.0)),
    )


class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    """gRPC face of artifacts."""

    def __init__(self, service: ArtifactService, urls: UrlCache) -> None:
        self.service = service
        self.urls = urls

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
        return self._pb(art)

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
        return self._pb(art)

    @grpc_errors
    async def GetArtifact(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.Artifact:
        return self._pb(await self.service.get(namespace_of(context), request.ref))

    @grpc_errors
    async def ListArtifacts(
        self, request: artifacts_pb2.ListArtifactsRequest, context: Context
    ) -> artifacts_pb2.ListArtifactsResponse:
        found = await self.service.list_all(namespace_of(context))
        return artifacts_pb2.ListArtifactsResponse(artifacts=[self._pb(a) for a in found])

    @grpc_errors
    async def DeleteArtifact(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.Artifact:
        return self._pb(await self.service.delete(namespace_of(context), request.ref))

    @grpc_errors
    async def DeleteAllArtifacts(
        self, request: artifacts_pb2.DeleteAllArtifactsRequest, context: Context
    ) -> artifacts_pb2.ListArtifactsResponse:
        found = await self.service.delete_all(namespace_of(context), request.confirm)
        return artifacts_pb2.ListArtifactsResponse(artifacts=[self._pb(a) for a in found])

    @grpc_errors
    async def ListVersions(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.ListVersionsResponse:
        found = await self.service.versions(namespace_of(context), request.ref)
        return artifacts_pb2.ListVersionsResponse(
            versions=[
                artifacts_pb2.ArtifactVersion(
                    index=int(v["index"]),
                    blob_uuid=str(v["blob_uuid"]),
                    created_at=float(v["created_at"]),
                    size=size,
                )
                for v, size in found
            ]
        )

    @grpc_errors
    async def DeleteVersion(
        self, request: artifacts_pb2.DeleteVersionRequest, context: Context
    ) -> artifacts_pb2.Artifact:
        art = await self.service.delete_version(namespace_of(context), request.ref, request.index)
        return self._pb(art)

    @grpc_errors
    async def SetMaxVersions(
        self, request: artifacts_pb2.SetMaxVersionsRequest, context: Context
    ) -> artifacts_pb2.Artifact:
        art = await self.service.set_max_versions(
            namespace_of(context), request.ref, request.max_versions
        )
        return self._pb(art)

    @grpc_errors
    async def GetEvents(
        self, request: instances_pb2.GetEventsRequest, context: Context
    ) -> instances_pb2.GetEventsResponse:
        events = await self.service.events(
            namespace_of(context), request.ref, request.event_type, request.limit
        )
        return instances_pb2.GetEventsResponse(events=[event_to_pb(e) for e in events])

    @grpc_errors
    async def Share(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.Artifact:
        return self._pb(await self.service.share(namespace_of(context), request.ref))

    @grpc_errors
    async def Unshare(
        self, request: artifacts_pb2.ArtifactRef, context: Context
    ) -> artifacts_pb2.Artifact:
        return self._pb(await self.service.share(namespace_of(context), request.ref, False))

    @grpc_errors
    async def CacheUrl(
        self, request: artifacts_pb2.CacheUrlRequest, context: Context
    ) -> artifacts_pb2.Artifact:
        art = await self.urls.cache(
            namespace_of(context), request.url, request.name, request.shared
        )
        return self._pb(art)

    def _pb(self, art: Artifact) -> artifacts_pb2.Artifact:
        return artifact_to_pb(self.service.view(art))
