"""The node stream refuses a node agent that speaks another wire version."""

from __future__ import annotations

import grpc
import pytest

from common.nodewire.messages import WIRE_VERSION
from controlplane.app import ControlPlane
from protos import node_pb2, node_pb2_grpc
from tests.component.conftest import bearer


@pytest.mark.parametrize("version", [0, WIRE_VERSION + 1])
async def test_other_wire_version_is_refused_at_connect(plane: ControlPlane, version: int) -> None:
    """A register of another wire version ends the stream with FAILED_PRECONDITION naming both."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect(metadata=await bearer(channel))
        register = node_pb2.Register(
            name="old-node", cpus=1, memory_mb=1024, hypervisor="fake", wire_version=version
        )
        await call.write(node_pb2.NodeMessage(register=register))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    assert f"version {version}" in details and f"version {WIRE_VERSION}" in details
