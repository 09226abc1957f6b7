"""Consoles end to end with a fake hypervisor: console log, clearing, screenshots, VDI
helper files, interactive sessions relayed over the node stream, and usage events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from nodeagent.hypervisor.console_ports import PORT_MAX, PORT_MIN
from nodeagent.hypervisor.fake import FAKE_BANNER
from nodeagent.png import png_size
from protos import blobs_pb2, blobs_pb2_grpc, consoles_pb2, consoles_pb2_grpc, instances_pb2
from tests.component.conftest import Api, FakeNode, authed, create_request, start_fake_node


@pytest.fixture
def channel(plane: ControlPlane) -> Iterator[grpc.aio.Channel]:
    """A channel to the plane for the console and blob services."""
    yield grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")


@pytest.fixture
async def consoles(channel: grpc.aio.Channel) -> Any:
    """A ConsoleService stub authenticated as system."""
    return await authed(consoles_pb2_grpc.ConsoleServiceStub, channel)


async def running(api: Api, name: str = "vm1", **spec: Any) -> instances_pb2.Instance:
    """Create an instance and wait until it is created and on."""
    created = await api.Create(create_request(name, **spec))
    return await api.wait_for(created.uuid, lambda i: i.state == "created")


def console_log(node: FakeNode, uuid: str) -> Path:
    return node.settings.instances_dir / uuid / "console.log"


async def test_instance_gets_console_and_display_ports(api: Api, node: FakeNode) -> None:
    """A created instance records its node's serial console and display ports."""
    inst = await running(api)
    assert PORT_MIN <= inst.console_port <= PORT_MAX
    assert PORT_MIN <= inst.vdi_port <= PORT_MAX
    assert inst.console_port != inst.vdi_port
    assert inst.vdi_tls_port == 0


async def test_console_data_is_the_logs_tail(api: Api, node: FakeNode, consoles: Any) -> None:
    """Console data holds the boot banner, and length N returns exactly the log's last N bytes."""
    inst = await running(api)
    whole = await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref=inst.uuid, length=-1))
    assert FAKE_BANNER.encode() in whole.data
    assert whole.data == console_log(node, inst.uuid).read_bytes()
    tail = await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref="vm1", length=7))
    assert tail.data == whole.data[-7:]
    default = await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref="vm1"))
    assert default.data == whole.data[-10240:]


async def test_clearing_empties_the_log_and_adds_an_audit_event(
    api: Api, node: FakeNode, consoles: Any
) -> None:
    """Clearing leaves an empty console log and an audit event saying so."""
    inst = await running(api)
    await consoles.ClearConsoleData(instances_pb2.InstanceRef(ref=inst.uuid))
    data = await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref=inst.uuid, length=-1))
    assert data.data == b""
    assert console_log(node, inst.uuid).read_bytes() == b""
    events = await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid, event_type="audit"))
    assert "console log cleared" in [e.message for e in events.events]


async def test_screenshot_is_a_downloadable_png_blob(
    api: Api, node: FakeNode, consoles: Any, channel: grpc.aio.Channel
) -> None:
    """A screenshot returns a blob uuid whose content is a PNG of the display, at once."""
    inst = await running(api)
    shot = await consoles.Screenshot(instances_pb2.InstanceRef(ref=inst.uuid))
    blobs = await authed(blobs_pb2_grpc.BlobServiceStub, channel)
    blob = await blobs.GetBlob(blobs_pb2.BlobRef(uuid=shot.blob_uuid))
    assert blob.state == "created"
    data = b"".join(
        [c.data async for c in blobs.Download(blobs_pb2.DownloadRequest(uuid=shot.blob_uuid))]
    )
    assert png_size(data) == (720, 400)


async def test_vdi_helper_names_type_host_and_port(api: Api, node: FakeNode, consoles: Any) -> None:
    """The .vv file names spice (the default) or vnc, the node's console host and display port."""
    spice = await running(api, "spicy")
    vnc = await running(api, "vnc1", video={"vdi": "vnc"})
    for inst, kind in ((spice, "spice"), (vnc, "vnc")):
        helper = await consoles.VdiConsoleHelper(instances_pb2.InstanceRef(ref=inst.uuid))
        lines = helper.vv.splitlines()
        assert lines[0] == "[virt-viewer]"
        assert f"type={kind}" in lines and "host=127.0.0.1" in lines
        assert f"port={inst.vdi_port}" in lines and "delete-this-file=1" in lines
        assert not any(line.startswith("tls-port=") for line in lines)
        assert (helper.type, helper.host, helper.port) == (kind, "127.0.0.1", inst.vdi_port)


def vv_password(vv: str) -> str:
    """The password= line's value in a .vv file ("" without one)."""
    found = [line.partition("=")[2] for line in vv.splitlines() if line.startswith("password=")]
    return found[0] if found else ""


async def test_vdi_helper_hands_out_the_display_password_new_after_power_on(
    api: Api, node: FakeNode, consoles: Any
) -> None:
    """The .vv file carries the node's display password, a new one after power off and on;
    no instance view (Get, List, Watch) ever shows it."""
    inst = await running(api, "vnc1", video={"vdi": "vnc"})
    ref = instances_pb2.InstanceRef(ref=inst.uuid)
    first = vv_password((await consoles.VdiConsoleHelper(ref)).vv)
    assert first == node.hypervisor.domains[inst.uuid].ports.vdi_password
    assert len(first) == 8
    await api.PowerOff(ref)
    await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
    await api.PowerOn(ref)
    await api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    second = vv_password((await consoles.VdiConsoleHelper(ref)).vv)
    assert second == node.hypervisor.domains[inst.uuid].ports.vdi_password
    assert second and second != first
    shown = await api.Get(ref)
    listed = await api.List(instances_pb2.ListInstancesRequest())
    stream = api.Watch(instances_pb2.WatchRequest(ref=inst.uuid))
    watched = await anext(aiter(stream))
    stream.cancel()
    for view in (shown, *listed.instances, watched):
        for password in (first, second):
            assert password.encode() not in view.SerializeToString()
            assert password not in str(view)


async def test_bad_references_and_states_are_refused(
    api: Api, node: FakeNode, consoles: Any
) -> None:
    """Unknown instances are NOT_FOUND; deleted ones FAILED_PRECONDITION; bad lengths INVALID."""
    ref = instances_pb2.InstanceRef(ref="nope")
    for call in (
        consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref="nope")),
        consoles.ClearConsoleData(ref),
        consoles.Screenshot(ref),
        consoles.VdiConsoleHelper(ref),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    inst = await running(api)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref=inst.uuid, length=-2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await api.Delete(instances_pb2.InstanceRef(ref=inst.uuid))
    await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    gone = instances_pb2.InstanceRef(ref=inst.uuid)
    for call in (
        consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref=inst.uuid)),
        consoles.ClearConsoleData(gone),
        consoles.Screenshot(gone),
        consoles.VdiConsoleHelper(gone),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stream = consoles.Attach(iter([consoles_pb2.ConsoleInput(ref=inst.uuid)]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _read_until(call: Any, wanted: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"never saw {wanted!r}; saw {seen[-200:]!r}")
        message = await asyncio.wait_for(call.read(), remaining)
        assert message is not grpc.aio.EOF, f"stream ended; saw {seen[-200:]!r}"
        seen += message.data
    return seen


async def test_attach_relays_both_ways_through_the_node(
    api: Api, node: FakeNode, consoles: Any
) -> None:
    """An attached client sees the console's output and what it types reaches the console."""
    inst = await running(api)
    queue: asyncio.Queue[consoles_pb2.ConsoleInput | None] = asyncio.Queue()

    async def inputs() -> AsyncIterator[consoles_pb2.ConsoleInput]:
        while (item := await queue.get()) is not None:
            yield item

    queue.put_nowait(consoles_pb2.ConsoleInput(ref=inst.uuid))
    call = consoles.Attach(inputs())
    await _read_until(call, f"fake console of {inst.uuid}".encode())
    queue.put_nowait(consoles_pb2.ConsoleInput(data=b"echo hello\r"))
    await _read_until(call, b"echo hello")
    # A second session on the same instance is refused while the first is attached.
    second = consoles.Attach(iter([consoles_pb2.ConsoleInput(ref=inst.uuid)]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await second.read()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    queue.put_nowait(None)  # detach
    assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
    await asyncio.sleep(0.2)
    assert node.agent.consoles.sessions == {}


async def test_a_stalled_console_client_does_not_stall_the_node(
    api: Api, node: FakeNode, consoles: Any
) -> None:
    """A client that floods input and never reads loses its session; the node keeps serving."""
    inst = await running(api)
    chunk = b"x" * 60_000

    async def flood() -> AsyncIterator[consoles_pb2.ConsoleInput]:
        yield consoles_pb2.ConsoleInput(ref=inst.uuid)
        for _ in range(2000):
            yield consoles_pb2.ConsoleInput(data=chunk)

    call = consoles.Attach(flood())
    started = time.monotonic()
    while node.agent.consoles.sessions == {} and time.monotonic() - started < 10:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the echo fills every queue on the way back
    before = time.monotonic()
    await consoles.GetConsoleData(consoles_pb2.ConsoleDataRequest(ref=inst.uuid))
    assert time.monotonic() - before < 2.0
    ended = False
    deadline = time.monotonic() + 30
    while not ended and time.monotonic() < deadline:
        try:
            ended = await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        except grpc.aio.AioRpcError:
            # RESOURCE_EXHAUSTED from the server, or the client's own send failing
            # because the server ended the call while the flood was still going.
            ended = True
    assert ended
    call.cancel()
    await asyncio.sleep(0.5)
    assert node.agent.consoles.sessions == {}


async def test_usage_events_report_growing_counters(plane: ControlPlane, api: Api) -> None:
    """Every interval the node reports each instance's CPU and disk counters as usage events."""
    fake = await start_fake_node(f"127.0.0.1:{plane.port}", usage_interval=0.3)
    try:
        inst = await running(api)
        deadline = time.monotonic() + 10
        while True:
            events = await api.GetEvents(
                instances_pb2.GetEventsRequest(ref=inst.uuid, event_type="usage")
            )
            if len(events.events) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        newest, older = events.events[0], events.events[1]
        assert newest.message == "usage" and newest.fqdn == "node1"
        extra = {k: dict(v) for k, v in newest.extra.items()}
        assert set(extra) == {"cpu usage", "disk usage", "network usage"}
        assert set(extra["cpu usage"]) == {"cpu time ns", "system time ns", "user time ns"}
        vda = dict(extra["disk usage"]["vda"])
        assert set(vda) == {
            "actual bytes on disk",
            "errors",
            "read bytes",
            "read requests",
            "write bytes",
            "write requests",
        }
        assert vda["errors"] == -1
        cpu_new = newest.extra["cpu usage"]["cpu time ns"]
        cpu_old = older.extra["cpu usage"]["cpu time ns"]
        assert cpu_new > cpu_old > 0
    finally:
        await fake.stop()
