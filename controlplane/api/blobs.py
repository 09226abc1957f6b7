"""The BlobService over gRPC: streamed upload and download, lookup, search, list, events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from controlplane.api.convert import event_to_pb
from controlplane.api.status import abort_for, grpc_errors, namespace_of
from controlplane.errors import InvalidArgument, MiniCloudError
from controlplane.model import Blob
from controlplane.services.blobs import BlobService
from protos import blobs_pb2, blobs_pb2_grpc, instances_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def blob_to_pb(blob: Blob, instances: Sequence[str] = ()) -> blobs_pb2.Blob:
    """A blob for the wire, with the live instances (visible to the caller) using it."""
    return blobs_pb2.Blob(
        uuid=blob.uuid,
        state=blob.state,
        size=blob.size,
        sha512=blob.sha512,
        reference_count=blob.reference_count,
        created_at=blob.created_at,
        instances=list(instances),
    )


class BlobServicer(blobs_pb2_grpc.BlobServiceServicer):
    """gRPC face of the blob store."""

    def __init__(self, service: BlobService, clock: Any) -> None:
        self.service = service
        self.blobs = service.blobs
        self.clock = clock

    @grpc_errors
    async def Upload(
        self, request_iterator: AsyncIterator[blobs_pb2.BlobChunk], context: Context
    ) -> blobs_pb2.Blob:
        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                yield chunk.data

        return blob_to_pb(await self.service.add(chunks(), self.clock()))

    async def Download(
        self, request: blobs_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[blobs_pb2.BlobChunk]:
        try:
            blob = await self.service.get_live(request.uuid)
            if request.offset < 0 or request.limit < 0:
                raise InvalidArgument("offset and limit must not be negative")
        except MiniCloudError as exc:
            await abort_for(context, exc)
            return
        async for data in self.blobs.read(blob.uuid, request.offset, request.limit):
            yield blobs_pb2.BlobChunk(data=data)

    @grpc_errors
    async def GetBlob(self, request: blobs_pb2.BlobRef, context: Context) -> blobs_pb2.Blob:
        blob = await self.service.get(request.uuid)
        return blob_to_pb(blob, await self.service.users(namespace_of(context), blob.uuid))

    @grpc_errors
    async def SearchBlobs(
        self, request: blobs_pb2.SearchBlobsRequest, context: Context
    ) -> blobs_pb2.ListBlobsResponse:
        if len(request.sha512) != 128:
            raise InvalidArgument("sha512 must be 128 hexadecimal digits")
        found = await self.blobs.find(request.sha512)
        return blobs_pb2.ListBlobsResponse(blobs=[blob_to_pb(found)] if found else [])

    @grpc_errors
    async def ListBlobs(
        self, request: blobs_pb2.ListBlobsRequest, context: Context
    ) -> blobs_pb2.ListBlobsResponse:
        found = await self.service.list_for(namespace_of(context))
        return blobs_pb2.ListBlobsResponse(blobs=[blob_to_pb(b, users) for b, users in found])

    @grpc_errors
    async def GetEvents(
        self, request: instances_pb2.GetEventsRequest, context: Context
    ) -> instances_pb2.GetEventsResponse:
        events = await self.service.events(request.ref, request.event_type, request.limit)
        return instances_pb2.GetEventsResponse(events=[event_to_pb(e) for e in events])
