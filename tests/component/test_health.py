"""The health service says whether the control plane can serve: its store must answer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.app import build
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Item, StoreError
from tests.component.conftest import plane_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SwitchableStore(MemoryStore):
    """The in-memory store, whose reads can be made to fail or to hang."""

    mode = "ok"

    async def get(self, key: bytes) -> Item | None:
        if self.mode == "fail":
            raise StoreError("disk gone")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return await super().get(key)


async def status(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)


async def wait_status(channel: grpc.aio.Channel, want: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await status(channel) != want:
        assert asyncio.get_running_loop().time() < deadline, f"health never became {want}"
        await asyncio.sleep(0.02)


async def test_health_follows_the_store(tmp_path: Path) -> None:
    """NOT_SERVING while the store fails or hangs past the timeout; SERVING once it answers."""
    store = SwitchableStore()
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"), health_interval=0.05, health_timeout=0.2
    )
    plane = await build(settings, store=store)
    await plane.serve()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            assert await status(channel) == SERVING
            store.mode = "fail"
            await wait_status(channel, NOT_SERVING)
            assert await status(channel, "minicloud.v1.InstanceService") == NOT_SERVING
            store.mode = "ok"
            await wait_status(channel, SERVING)
            store.mode = "hang"
            await wait_status(channel, NOT_SERVING)
            store.mode = "ok"
            await wait_status(channel, SERVING)
            assert await status(channel, "minicloud.v1.InstanceService") == SERVING
    finally:
        await plane.stop(0)
