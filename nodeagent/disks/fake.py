"""A disk builder that writes nothing, for fast tests and scale simulation.

It honours the contract's visible behaviour: bases it is told about (and
existing local paths) resolve; any other base raises ``DiskError``, as does a
cdrom without an image.
"""

from __future__ import annotations

from pathlib import Path

from nodeagent.disks.protocol import DiskError, ProgressCallback
from nodeagent.hypervisor.protocol import PreparedDisk
from nodeagent.spec import DiskSpec


class FakeDiskBuilder:
    """Pretends to build disks under a notional folder."""

    def __init__(self, known_bases: frozenset[str] = frozenset({"debian:11", "debian:12"})) -> None:
        self.known_bases = known_bases
        self.prepared: dict[str, list[PreparedDisk]] = {}

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskSpec, ...], progress: ProgressCallback
    ) -> list[PreparedDisk]:
        for index, spec in enumerate(disks):
            if spec.type == "cdrom" and not spec.base:
                raise DiskError(f"disk {index} is a cdrom without an image")
            known = spec.base in self.known_bases or spec.base.startswith("sf://blob/")
            if spec.base and not known and not Path(spec.base).exists():
                raise DiskError(f"base image {spec.base!r} does not exist")
        result = [
            PreparedDisk(
                path=Path(f"/fake/{instance_uuid}/disk{i}.qcow2"), bus=d.bus, device=d.type
            )
            for i, d in enumerate(disks)
        ]
        self.prepared[instance_uuid] = result
        return result

    async def remove(self, instance_uuid: str) -> None:
        self.prepared.pop(instance_uuid, None)
