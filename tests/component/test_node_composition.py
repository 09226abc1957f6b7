"""The node agent's composition: built in one place, run by one owner, stopped leaving nothing."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from common.nodewire.messages import NodeEvent
from controlplane.app import start
from nodeagent.app import build
from nodeagent.blobclient import GrpcBlobs
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.network.fake import FakeNetworkDriver
from nodeagent.settings import Settings
from tests.component.conftest import SYSTEM_KEY, plane_settings


def node_settings(target: str, data_dir: Path) -> Settings:
    """A fake node's settings with quick redials."""
    return Settings(
        control_plane=target,
        name="composed",
        data_dir=data_dir,
        hypervisor="fake",
        cpus=2,
        memory_mb=2048,
        backoff_base=0.05,
        backoff_cap=0.2,
        usage_interval=0.05,
        metrics_listen="127.0.0.1:0",
    )


async def test_build_runs_nothing_and_drops_reports_until_connected() -> None:
    """build wires the parts but starts no task; the outbox drops what is sent before a stream."""
    data_dir = Path(tempfile.mkdtemp(prefix="mcn-", dir="/tmp"))
    before = asyncio.all_tasks()
    agent = build(
        node_settings("127.0.0.1:1", data_dir),
        FakeHypervisor(),
        FakeDiskBuilder(),
        GrpcBlobs("127.0.0.1:1", Credentials("system", SYSTEM_KEY)),
    )
    try:
        assert asyncio.all_tasks() == before
        agent.outbox.send(NodeEvent("i-1", "nobody hears this"))
        assert agent.outbox.backlog() == 0 and not agent.outbox.attached
        assert agent.watch.links is agent.guestops.links
    finally:
        await agent.blobs.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_run_then_stop_leaves_no_task_running(tmp_path: Path) -> None:
    """After stop, every task the agent started (stream, observer, usage, links) has ended."""
    before = asyncio.all_tasks()
    plane = await start(plane_settings(tmp_path / "cp"))
    data_dir = Path(tempfile.mkdtemp(prefix="mcn-", dir="/tmp"))
    target = f"127.0.0.1:{plane.port}"
    hypervisor = FakeHypervisor()
    agent = build(
        node_settings(target, data_dir),
        hypervisor,
        FakeDiskBuilder(),
        GrpcBlobs(target, Credentials("system", SYSTEM_KEY)),
        FakeNetworkDriver(),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.stream.connected.wait(), 10)
        assert agent.outbox.attached
        agent.watch.domain_on("i-without-a-socket", has_agent=True)  # a link that keeps retrying
        await asyncio.sleep(0.1)
        assert len(agent.watch.links.watched()) == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await plane.stop(0)
        shutil.rmtree(data_dir, ignore_errors=True)
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    left.discard(asyncio.current_task())
    assert left == set()
    assert not agent.outbox.attached and agent.watch.links.watched() == []
