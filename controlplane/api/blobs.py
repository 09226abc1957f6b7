"""The BlobService over gRPC: streamed upload and download, lookup, search by hash."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.status import abort_for, grpc_errors
from controlplane.errors import InvalidArgument, MiniCloudError, NotFound
from controlplane.model import Blob
from controlplane.store.blobs import BlobStore
from protos import blobs_pb2, blobs_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def blob_to_pb(blob: Blob) -> blobs_pb2.Blob:
    """A blob for the wire."""
    return blobs_pb2.Blob(
        uuid=blob.uuid,
        state=blob.state,
        size=blob.size,
        sha512=blob.sha512,
        reference_count=blob.reference_count,
        created_at=blob.created_at,
    )


class BlobServicer(blobs_pb2_grpc.BlobServiceServicer):
    """gRPC face of the blob store."""

    def __init__(self, blobs: BlobStore, clock: Any) -> None:
        self.blobs = blobs
        self.clock = clock

    @grpc_errors
    async def Upload(
        self, request_iterator: AsyncIterator[blobs_pb2.BlobChunk], context: Context
    ) -> blobs_pb2.Blob:
        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                yield chunk.data

        return blob_to_pb(await self.blobs.add(chunks(), self.clock()))

    async def Download(
        self, request: blobs_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[blobs_pb2.BlobChunk]:
        try:
            blob = await self._get(request.uuid)
            if request.offset < 0 or request.limit < 0:
                raise InvalidArgument("offset and limit must not be negative")
        except MiniCloudError as exc:
            await abort_for(context, exc)
            return
        async for data in self.blobs.read(blob.uuid, request.offset, request.limit):
            yield blobs_pb2.BlobChunk(data=data)

    @grpc_errors
    async def GetBlob(self, request: blobs_pb2.BlobRef, context: Context) -> blobs_pb2.Blob:
        return blob_to_pb(await self._get(request.uuid))

    @grpc_errors
    async def SearchBlobs(
        self, request: blobs_pb2.SearchBlobsRequest, context: Context
    ) -> blobs_pb2.ListBlobsResponse:
        if len(request.sha512) != 128:
            raise InvalidArgument("sha512 must be 128 hexadecimal digits")
        found = await self.blobs.find(request.sha512)
        return blobs_pb2.ListBlobsResponse(blobs=[blob_to_pb(found)] if found else [])

    async def _get(self, uuid: str) -> Blob:
        blob = await self.blobs.get(uuid) if uuid else None
        if blob is None:
            raise NotFound(f"blob {uuid!r} not found")
        return blob
