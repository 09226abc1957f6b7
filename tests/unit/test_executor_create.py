"""The node executor's create path: independent preparation steps run at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.nodewire.commands import CreateDomain
from common.nodewire.domain import DiskRequest, DomainRequest
from common.nodewire.messages import NodeEvent
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskError, ProgressCallback
from nodeagent.executor import Executor
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import PreparedDisk

UUID = "0b6f3f6e-9a64-4b8e-a6c1-7d0d7c2b1f10"
SPEC = DomainRequest(uuid=UUID, name="vm", disks=(DiskRequest(size_gb=1, base="debian:11"),))


class OverlapDisks(FakeDiskBuilder):
    """Disks that are only ready once the config drive has started being built."""

    def __init__(self, drive_fails: bool = False) -> None:
        super().__init__()
        self.drive_started = asyncio.Event()
        self.drive_fails = drive_fails
        self.disks_done = False

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskRequest, ...], progress: ProgressCallback
    ) -> list[PreparedDisk]:
        await asyncio.wait_for(self.drive_started.wait(), 5)
        result = await super().prepare(instance_uuid, disks, progress)
        self.disks_done = True
        return result

    async def config_drive(self, spec: DomainRequest) -> PreparedDisk | None:
        self.drive_started.set()
        if self.drive_fails:
            raise DiskError("no room for the config drive")
        return await super().config_drive(spec)


def executor(disks: FakeDiskBuilder, tmp_path: Path) -> tuple[Executor, FakeHypervisor]:
    """An executor on a fake hypervisor whose events are thrown away."""
    hypervisor = FakeHypervisor()
    events: list[NodeEvent] = []
    return Executor(hypervisor, disks, tmp_path, events.append), hypervisor


async def test_config_drive_is_built_while_the_disks_are_prepared(tmp_path: Path) -> None:
    """Create builds the config drive while the disks are made, then starts with both."""
    disks = OverlapDisks()
    run, hypervisor = executor(disks, tmp_path)
    result = await asyncio.wait_for(run.execute(CreateDomain("c1", UUID, SPEC)), 10)
    assert result.ok, result.error
    attached = hypervisor.disks[UUID]
    assert [d.path.name for d in attached] == ["disk0.qcow2", "config.iso"]


async def test_a_failed_step_fails_the_create_after_the_others_end(tmp_path: Path) -> None:
    """A config drive failure is the create's error, and the disk step is not left running."""
    disks = OverlapDisks(drive_fails=True)
    run, hypervisor = executor(disks, tmp_path)
    result = await asyncio.wait_for(run.execute(CreateDomain("c1", UUID, SPEC)), 10)
    assert not result.ok and "no room for the config drive" in result.error
    assert disks.disks_done
    assert UUID not in hypervisor.domains
