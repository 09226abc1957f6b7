"""Blob transfer through the control plane's BlobService: the node's adapter for it.

``GrpcBlobs`` implements ``nodeagent.guest.ops.BlobTransfer`` over gRPC,
counting the bytes it moves in ``minicloud_blob_bytes_total``. With several
control-plane addresses a download that fails with UNAVAILABLE goes on
through the next address from the byte it had reached (each address once in
a row), and an upload is sent once, over the first address that connects
(one that does not was sent nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from common.addresslist import AddressList
from nodeagent.credentials import Credentials
from nodeagent.metrics import NodeMetrics
from protos import blobs_pb2, blobs_pb2_grpc

if TYPE_CHECKING:
    from protos.blobs_pb2_grpc import BlobServiceAsyncStub

MAX_MESSAGE = 64 * 1024 * 1024
# Seconds an address may take to connect before an upload moves on.
CONNECT_TIMEOUT = 5.0


class GrpcBlobs:
    """BlobTransfer over the control plane's BlobService (one address or several)."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        metrics: NodeMetrics | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.metrics = metrics
        self.credentials = credentials
        self.addresses = AddressList(target)
        self.connect_timeout = connect_timeout
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.channel  # noqa: B018 - the first address's channel, made now as before

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            options: list[tuple[str, int]] = [
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ]
            if not self.addresses.single:
                options.append(("grpc.max_reconnect_backoff_ms", 5000))
            self.channels[address] = self.credentials.channel(address, options=options)
        return self.channels[address]

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the current address."""
        return self._channel(self.addresses.current)

    @property
    def stub(self) -> BlobServiceAsyncStub:
        """BlobService over the current address."""
        found: BlobServiceAsyncStub = blobs_pb2_grpc.BlobServiceStub(self.channel)
        return found

    async def download(self, uuid: str) -> AsyncIterator[bytes]:
        moved = 0
        failures = 0  # in a row, without a byte
        while True:
            address = self.addresses.current
            try:
                stub = self.stub
                metadata = await self.credentials.metadata(self.channel)
                request = blobs_pb2.DownloadRequest(uuid=uuid, offset=moved)
                async for chunk in stub.Download(request, metadata=metadata):
                    self._moved("in", len(chunk.data))
                    moved += len(chunk.data)
                    failures = 0
                    yield chunk.data
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.credentials.forget()
                if exc.code() != grpc.StatusCode.UNAVAILABLE or self.addresses.single:
                    raise
                self.addresses.failed(address)
                failures += 1
                if failures >= len(self.addresses.addresses):
                    raise

    async def upload(self, chunks: AsyncIterator[bytes]) -> str:
        async def messages() -> AsyncIterator[blobs_pb2.BlobChunk]:
            async for data in chunks:
                self._moved("out", len(data))
                yield blobs_pb2.BlobChunk(data=data)

        await self._connect()
        metadata = await self.credentials.metadata(self.channel)
        try:
            blob = await self.stub.Upload(messages(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.credentials.forget()
            raise
        return blob.uuid

    async def _connect(self) -> None:
        """Make the first address that connects current (with several; the last one is
        kept when none does, and the call fails there as it would have)."""
        if self.addresses.single:
            return
        for address in self.addresses.rotation():
            if await _connects(self._channel(address), self.connect_timeout):
                return
            self.addresses.failed(address)

    def _moved(self, direction: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.blob_bytes.inc(size, direction=direction)

    async def close(self) -> None:
        """Close the channels."""
        for channel in self.channels.values():
            await channel.close()


async def _connects(channel: grpc.aio.Channel, timeout: float) -> bool:
    """Whether channel is connected or connects within timeout (False once an attempt fails)."""
    final = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)

    async def settled() -> bool:
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY and state not in final:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return state == grpc.ChannelConnectivity.READY

    try:
        return await asyncio.wait_for(settled(), timeout)
    except TimeoutError:
        return False
