"""A network that cannot be set up here for good fails the creates that need it at once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from common.nodewire.commands import CreateDomain, EnsureNetwork
from common.nodewire.domain import DiskRequest, DomainRequest, NicRequest
from common.nodewire.messages import NodeEvent
from common.nodewire.network import NetworkConfig
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.executor import Executor
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.network.claims import ClaimRefused
from nodeagent.network.fake import FakeNetworkDriver

UUID = "0b6f3f6e-9a64-4b8e-a6c1-7d0d7c2b1f10"
NET = "5d0c1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
CONFIG = NetworkConfig(uuid=NET, vni=4242, netblock="10.9.0.0/24", gateway="10.9.0.1")
SPEC = DomainRequest(
    uuid=UUID,
    name="vm",
    disks=(DiskRequest(size_gb=1, base="debian:11"),),
    interfaces=(NicRequest(uuid="i1", network_uuid=NET, mac="02:00:00:00:00:01"),),
)


async def test_a_refused_network_fails_its_creates_at_once_and_says_why(tmp_path: Path) -> None:
    """Another cluster's VXLAN id here: the ensure fails, and so does the create, not 60 s later."""
    network = FakeNetworkDriver()
    events: list[NodeEvent] = []
    run = Executor(FakeHypervisor(), FakeDiskBuilder(), tmp_path, events.append, network=network)
    network.fail_next(ClaimRefused("VXLAN id 4242 is used on this host by network n, cluster c's"))
    ensured = await run.execute(EnsureNetwork("e1", NET, CONFIG))
    assert not ensured.ok and not ensured.retryable
    created = await asyncio.wait_for(run.execute(CreateDomain("c1", UUID, SPEC)), 5)
    assert not created.ok and not created.retryable
    assert "cannot be set up on this node: VXLAN id 4242 is used" in created.error

    assert (await run.execute(EnsureNetwork("e2", NET, CONFIG))).ok  # released meanwhile
    again = dataclasses.replace(SPEC, uuid="1b6f3f6e-9a64-4b8e-a6c1-7d0d7c2b1f11")
    assert (await asyncio.wait_for(run.execute(CreateDomain("c2", again.uuid, again)), 5)).ok
