"""The control plane's composition: built, served and stopped as one, from one service table."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.app import REFLECTED, SERVICES, build
from protos import reflection_v1_pb2, reflection_v1_pb2_grpc
from tests.component.conftest import plane_settings, start_fake_node


async def test_build_listens_on_nothing_until_served(tmp_path: Path) -> None:
    """build wires every part but binds no port and starts no task; serve does both."""
    plane = await build(plane_settings(tmp_path / "cp"))
    assert plane.port == 0 and len(plane.tasks) == 0
    await plane.serve()
    try:
        assert plane.port > 0 and len(plane.tasks) >= 1
    finally:
        await plane.stop(0)


async def test_stop_leaves_no_task_running(tmp_path: Path) -> None:
    """After stop, every task the control plane started (background or per call) has ended."""
    before = asyncio.all_tasks()
    plane = await build(plane_settings(tmp_path / "cp"))
    await plane.serve()
    node = await start_fake_node(f"127.0.0.1:{plane.port}")
    plane.parts.reconciler._later(3600, plane.parts.reconciler._resend, "node1", "nobody")
    assert len(plane.tasks) >= 2
    await node.stop()
    await plane.stop(0)
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    left.discard(asyncio.current_task())
    assert left == set() and len(plane.tasks) == 0


async def test_reflection_and_health_list_exactly_the_table(tmp_path: Path) -> None:
    """Reflection names the table's services plus health and reflection; each one is SERVING."""
    plane = await build(plane_settings(tmp_path / "cp"))
    await plane.serve()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names = set()
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names |= {s.name for s in reply.list_services_response.service}
            table = {s.name for s in SERVICES}
            extra = {
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection",
            }
            assert names == set(REFLECTED) == table | extra
            assert len(table) == len(SERVICES)
            health = health_pb2_grpc.HealthStub(channel)
            for name in table:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await plane.stop(0)


async def test_reflection_v1_answers_as_v1alpha_does(tmp_path: Path) -> None:
    """Tools that ask for grpc.reflection.v1 get the same services and descriptors as v1alpha."""
    plane = await build(plane_settings(tmp_path / "cp"))
    await plane.serve()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            v1 = reflection_v1_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_v1_pb2.ServerReflectionRequest(list_services=""),
                reflection_v1_pb2.ServerReflectionRequest(
                    file_containing_symbol="minicloud.v1.InstanceService"
                ),
                reflection_v1_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
            ]
            listed, found, missing = [r async for r in v1.ServerReflectionInfo(iter(requests))]
            assert {s.name for s in listed.list_services_response.service} == set(REFLECTED)
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in found.file_descriptor_response.file_descriptor_proto
            ]
            assert "protos/instances.proto" in {f.name for f in files}
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
            assert missing.original_request.file_containing_symbol == "no.such.Thing"
    finally:
        await plane.stop(0)


async def test_a_second_control_plane_on_a_taken_address_is_refused(tmp_path: Path) -> None:
    """Two servers never share one address: the second one fails to start, saying why."""
    first = await build(plane_settings(tmp_path / "one"))
    await first.serve()
    second = await build(plane_settings(tmp_path / "two", first.port))
    try:
        with pytest.raises(OSError, match="in use"):
            await second.serve()
    finally:
        await second.stop(0)
        await first.stop(0)


async def test_a_stopped_control_plane_frees_its_address(tmp_path: Path) -> None:
    """Once stop returns, a new control plane can listen on the same port at once."""
    first = await build(plane_settings(tmp_path / "cp"))
    await first.serve()
    port = first.port
    await first.stop(0)
    again = await build(plane_settings(tmp_path / "cp", port))
    await again.serve()
    try:
        assert again.port == port
    finally:
        await again.stop(0)


def test_a_taken_address_stops_the_control_plane_with_one_clear_line(tmp_path: Path) -> None:
    """The console script exits 1 with "cannot start" and the address, not a traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", "from controlplane.app import main; main()"],
            env={
                **os.environ,
                "MINICLOUD_LISTEN": f"127.0.0.1:{port}",
                "MINICLOUD_METRICS_LISTEN": "127.0.0.1:0",
                "MINICLOUD_DATA_DIR": str(tmp_path / "cp"),
                "MINICLOUD_SYSTEM_KEY": "k" * 32,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot start the control plane" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
