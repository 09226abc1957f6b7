"""Blob transfer through the control plane's BlobService: the node's adapter for it.

``GrpcBlobs`` implements ``nodeagent.guest.ops.BlobTransfer`` over gRPC,
counting the bytes it moves in ``minicloud_blob_bytes_total``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from nodeagent.credentials import Credentials
from nodeagent.metrics import NodeMetrics
from protos import blobs_pb2, blobs_pb2_grpc

if TYPE_CHECKING:
    from protos.blobs_pb2_grpc import BlobServiceAsyncStub

MAX_MESSAGE = 64 * 1024 * 1024


class GrpcBlobs:
    """BlobTransfer over the control plane's BlobService."""

    def __init__(
        self, target: str, credentials: Credentials, metrics: NodeMetrics | None = None
    ) -> None:
        self.metrics = metrics
        self.credentials = credentials
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self.stub: BlobServiceAsyncStub = blobs_pb2_grpc.BlobServiceStub(self.channel)

    async def download(self, uuid: str) -> AsyncIterator[bytes]:
        metadata = await self.credentials.metadata(self.channel)
        try:
            async for chunk in self.stub.Download(
                blobs_pb2.DownloadRequest(uuid=uuid), metadata=metadata
            ):
                self._moved("in", len(chunk.data))
                yield chunk.data
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.credentials.forget()
            raise

    async def upload(self, chunks: AsyncIterator[bytes]) -> str:
        async def messages() -> AsyncIterator[blobs_pb2.BlobChunk]:
            async for data in chunks:
                self._moved("out", len(data))
                yield blobs_pb2.BlobChunk(data=data)

        metadata = await self.credentials.metadata(self.channel)
        try:
            blob = await self.stub.Upload(messages(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.credentials.forget()
            raise
        return blob.uuid

    def _moved(self, direction: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.blob_bytes.inc(size, direction=direction)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()
