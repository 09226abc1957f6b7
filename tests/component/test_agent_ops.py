"""Agent operations and blobs end to end: gRPC, control plane, node agent, and the real
guest agent program serving a fake instance's channel socket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.api import JsonDict, to_dict
from controlplane.app import ControlPlane, start
from controlplane.model import AgentOperation
from controlplane.store.agentops import AgentOperations
from controlplane.store.rocks import RocksStore
from protos import agent_pb2, agent_pb2_grpc, blobs_pb2, blobs_pb2_grpc, instances_pb2
from tests.component.conftest import Api, FakeNode, authed, create_request, plane_settings

ROOT = Path(__file__).resolve().parents[2]


class GuestAgent:
    """The real guest agent program, serving an instance's channel socket as a guest would."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guestagent.serve", "--listen", str(self.socket)], cwd=ROOT
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def channel(plane: ControlPlane) -> Iterator[grpc.aio.Channel]:
    """A channel to the plane for the agent and blob services."""
    yield grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")


@pytest.fixture
async def agent(channel: grpc.aio.Channel) -> Any:
    """An AgentService stub authenticated as system."""
    return await authed(agent_pb2_grpc.AgentServiceStub, channel)


@pytest.fixture
async def blobs(channel: grpc.aio.Channel) -> Any:
    """A BlobService stub authenticated as system."""
    return await authed(blobs_pb2_grpc.BlobServiceStub, channel)


async def agent_instance(
    api: Api, node: FakeNode, name: str = "ga", start: bool = True
) -> tuple[str, GuestAgent]:
    """A running fake instance with an sf-agent channel served by the real guest agent."""
    inst = await api.Create(create_request(name, side_channels=["sf-agent"]))
    await api.wait_for(inst.uuid, lambda i: i.state == "created")
    guest = GuestAgent(node.agent_socket(inst.uuid))
    if start:
        guest.start()
        await api.wait_for(inst.uuid, lambda i: i.agent_state == "ready")
    return inst.uuid, guest


async def finished(agent: Any, uuid: str, timeout: float = 20) -> JsonDict:
    """Poll an operation until it is complete or in error; returns it as a dict."""
    for _ in range(int(timeout / 0.05)):
        op = await agent.GetAgentOperation(agent_pb2.OperationRef(uuid=uuid))
        if op.state in ("complete", "error"):
            return to_dict(op)
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {uuid} did not finish: {op}")


async def execute(agent: Any, ref: str, command: str) -> JsonDict:
    op = await agent.Execute(agent_pb2.ExecuteRequest(ref=ref, command_line=command))
    return await finished(agent, op.uuid)


async def upload(blobs: Any, data: bytes) -> blobs_pb2.Blob:
    async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
        for i in range(0, len(data), 1 << 20):
            yield blobs_pb2.BlobChunk(data=data[i : i + (1 << 20)])

    blob: blobs_pb2.Blob = await blobs.Upload(chunks())
    return blob


async def download(blobs: Any, uuid: str, offset: int = 0, limit: int = 0) -> bytes:
    request = blobs_pb2.DownloadRequest(uuid=uuid, offset=offset, limit=limit)
    return b"".join([c.data async for c in blobs.Download(request)])


async def test_execute_returns_output_and_exit_codes(api: Api, node: FakeNode, agent: Any) -> None:
    """Execute results carry return-code, stdout and stderr as Shaken Fist has them."""
    uuid, guest = await agent_instance(api, node)
    try:
        ok = await execute(agent, uuid, "echo hello")
        assert ok["state"] == "complete"
        assert ok["commands"][0]["command"] == "execute"
        result = ok["results"]["0"]
        assert (result["return-code"], result["stdout"], result["stderr"]) == (0, "hello\n", "")
        assert (await execute(agent, uuid, "exit 3"))["results"]["0"]["return-code"] == 3
        missing = (await execute(agent, uuid, "no-such-command-here"))["results"]["0"]
        assert missing["return-code"] == 127 and "not found" in missing["stderr"]
    finally:
        guest.stop()


async def test_large_output_goes_to_a_blob(
    api: Api, node: FakeNode, agent: Any, blobs: Any
) -> None:
    """Output over 10 KiB is kept in a blob named by stdout_blob."""
    uuid, guest = await agent_instance(api, node)
    try:
        result = (await execute(agent, uuid, "yes x | head -c 20000"))["results"]["0"]
        assert result["stdout"] == ""
        assert await download(blobs, result["stdout_blob"]) == b"x\n" * 10000
    finally:
        guest.stop()


async def test_execute_stream_yields_output_before_the_command_ends(
    api: Api, node: FakeNode, agent: Any
) -> None:
    """ExecuteStream delivers stdout while a slow command still runs, then the finished op."""
    uuid, guest = await agent_instance(api, node)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        seen: list[tuple[str, float]] = []
        final = None
        request = agent_pb2.ExecuteRequest(
            ref=uuid, command_line="echo a; echo e >&2; sleep 2; echo b"
        )
        async for out in agent.ExecuteStream(request):
            kind = out.WhichOneof("output")
            if kind == "operation":
                final = out.operation
            else:
                seen.append((getattr(out, kind).decode(), loop.time() - started))
        assert final is not None and final.state == "complete"
        assert final.results["0"]["stdout"] == "a\nb\n"
        first = next(t for text, t in seen if "a" in text)
        assert first < 1.5, seen
        assert any("e" in text for text, _ in seen)
    finally:
        guest.stop()


async def test_put_and_get_round_trip_10_mib(
    api: Api, node: FakeNode, agent: Any, blobs: Any, tmp_path: Path
) -> None:
    """A 10 MiB file put through a blob comes back identical, with its mode applied."""
    uuid, guest = await agent_instance(api, node)
    try:
        data = os.urandom(10 * 1024 * 1024)
        blob = await upload(blobs, data)
        assert blob.sha512 == hashlib.sha512(data).hexdigest()
        target = tmp_path / "put.bin"
        put = await agent.Put(
            agent_pb2.PutRequest(ref=uuid, blob_uuid=blob.uuid, path=str(target), mode=0o100600),
        )
        done = await finished(agent, put.uuid)
        assert done["state"] == "complete", done["error_message"]
        assert [c["command"] for c in done["commands"]] == ["put-blob", "chmod"]
        assert target.stat().st_mode & 0o777 == 0o600
        get = await agent.Get(agent_pb2.GetRequest(ref=uuid, path=str(target)))
        got = await finished(agent, get.uuid)
        assert got["state"] == "complete"
        result = got["results"]["0"]
        assert result["stat_result"]["size"] == len(data)
        back = await download(blobs, result["content_blob"])
        assert hashlib.sha512(back).hexdigest() == blob.sha512
    finally:
        guest.stop()


async def test_get_missing_path_ends_in_error(api: Api, node: FakeNode, agent: Any) -> None:
    """Getting a path that does not exist ends the operation in error, saying so."""
    uuid, guest = await agent_instance(api, node)
    try:
        op = await agent.Get(agent_pb2.GetRequest(ref=uuid, path="/no/such/file"))
        done = await finished(agent, op.uuid)
        assert done["state"] == "error"
        assert "/no/such/file" in done["error_message"]
    finally:
        guest.stop()


async def test_ops_queued_before_the_agent_is_ready_run_later(
    api: Api, node: FakeNode, agent: Any
) -> None:
    """Operations queued while the agent has no contact run, in order, once it is ready."""
    uuid, guest = await agent_instance(api, node, start=False)
    try:
        inst = await api.Get(instances_pb2.InstanceRef(ref=uuid))
        assert inst.agent_state == "not ready (no contact)"
        first = await agent.Execute(agent_pb2.ExecuteRequest(ref=uuid, command_line="echo 1"))
        second = await agent.Execute(agent_pb2.ExecuteRequest(ref=uuid, command_line="echo 2"))
        listed = await agent.ListAgentOperations(agent_pb2.ListAgentOperationsRequest(ref=uuid))
        assert [o.uuid for o in listed.operations] == [first.uuid, second.uuid]
        assert {o.state for o in listed.operations} == {"queued"}
        guest.start()
        assert (await finished(agent, first.uuid))["results"]["0"]["stdout"] == "1\n"
        assert (await finished(agent, second.uuid))["results"]["0"]["stdout"] == "2\n"
        ready = await api.Get(instances_pb2.InstanceRef(ref=uuid))
        assert ready.agent_state == "ready" and ready.agent_system_boot_time > 0
        queued = await agent.ListAgentOperations(agent_pb2.ListAgentOperationsRequest(ref=uuid))
        assert list(queued.operations) == []
        everything = await agent.ListAgentOperations(
            agent_pb2.ListAgentOperationsRequest(ref=uuid, all=True)
        )
        assert len(everything.operations) == 2
    finally:
        guest.stop()


async def test_delete_queued_operation_keeps_it_from_running(
    api: Api, node: FakeNode, agent: Any
) -> None:
    """A deleted queued operation never runs."""
    uuid, guest = await agent_instance(api, node, start=False)
    try:
        op = await agent.Execute(agent_pb2.ExecuteRequest(ref=uuid, command_line="echo x"))
        deleted = await agent.DeleteAgentOperation(agent_pb2.OperationRef(uuid=op.uuid))
        assert deleted.state == "deleted"
        guest.start()
        await api.wait_for(uuid, lambda i: i.agent_state == "ready")
        await asyncio.sleep(0.3)
        again = await agent.GetAgentOperation(agent_pb2.OperationRef(uuid=op.uuid))
        assert again.state == "deleted"
    finally:
        guest.stop()


async def test_agent_killed_fails_operation_and_state_says_so(
    api: Api, node: FakeNode, agent: Any
) -> None:
    """Killing the agent mid-command ends the operation in error and leaves the state not ready."""
    uuid, guest = await agent_instance(api, node)
    try:
        op = await agent.Execute(agent_pb2.ExecuteRequest(ref=uuid, command_line="sleep 30"))
        await asyncio.sleep(0.5)
        guest.stop()
        done = await finished(agent, op.uuid, timeout=40)
        assert done["state"] == "error" and done["error_message"]
        await api.wait_for(uuid, lambda i: i.agent_state != "ready", timeout=30)
    finally:
        guest.stop()


async def test_power_off_reports_agent_powered_off(api: Api, node: FakeNode) -> None:
    """A powered-off instance's agent state says so."""
    uuid, guest = await agent_instance(api, node)
    try:
        await api.PowerOff(instances_pb2.InstanceRef(ref=uuid))
        await api.wait_for(uuid, lambda i: i.agent_state == "not ready (instance powered off)")
    finally:
        guest.stop()


async def test_agent_ops_need_the_side_channel_and_valid_input(
    api: Api, node: FakeNode, agent: Any
) -> None:
    """Instances without sf-agent, empty commands, relative paths and unknown blobs are refused."""
    plain = await api.Create(create_request("plain"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.Execute(agent_pb2.ExecuteRequest(ref=plain.uuid, command_line="true"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    uuid, _guest = await agent_instance(api, node, start=False)
    cases = [
        (
            agent.Execute(agent_pb2.ExecuteRequest(ref=uuid, command_line=" ")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            agent.Get(agent_pb2.GetRequest(ref=uuid, path="relative")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            agent.Put(agent_pb2.PutRequest(ref=uuid, blob_uuid="nope", path="/x", mode=0o644)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            agent.GetAgentOperation(agent_pb2.OperationRef(uuid="nope")),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == code


async def test_blobs_dedupe_search_and_ranges(blobs: Any) -> None:
    """Uploading known content returns the same blob; search by sha512; download by range."""
    data = b"0123456789" * 1000
    first = await upload(blobs, data)
    second = await upload(blobs, data)
    assert first.uuid == second.uuid and first.size == len(data)
    found = await blobs.SearchBlobs(blobs_pb2.SearchBlobsRequest(sha512=first.sha512))
    assert [b.uuid for b in found.blobs] == [first.uuid]
    assert await download(blobs, first.uuid, offset=5, limit=7) == data[5:12]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await blobs.GetBlob(blobs_pb2.BlobRef(uuid="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_operations_left_executing_by_a_restart_end_in_error(tmp_path: Path) -> None:
    """An operation still executing when the control plane stopped ends in error on restart."""
    settings = plane_settings(tmp_path / "cp")
    store = RocksStore(settings.data_dir / "store")
    op = AgentOperation(
        "11111111-1111-4111-8111-111111111111",
        "system",
        "i",
        ({"command": "execute"},),
        "executing",
        created_at=1.0,
    )
    await AgentOperations(store).create(op)
    await store.close()
    plane = await start(settings)
    try:
        again = await plane.agent.get("system", op.uuid)
        assert again.state == "error" and "restarted" in again.error_message
    finally:
        await plane.stop(0)
