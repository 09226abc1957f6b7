"""A disk builder that writes nothing, for fast tests and scale simulation.

It honours the contract's visible behaviour: bases it is told about (and
existing local paths) resolve; any other base raises ``DiskError``, as does a
cdrom without an image. Config drives are built with the real content
builder and kept in ``drives`` (path -> content) instead of an ISO file.
Each disk's content lives in ``contents`` (instance -> one bytes per disk;
a new disk holds ``base:<its base>``), which tests may change as a guest
would; ``export`` uploads exactly that content.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from common.nodewire.domain import DiskRequest, DomainRequest
from nodeagent.disks.configdrive import RANDOM_SEED_BYTES, drive_files
from nodeagent.disks.protocol import (
    BlobSink,
    DiskError,
    ProgressCallback,
    SnapshotCopy,
    local_firmware,
)
from nodeagent.hypervisor.protocol import PreparedDisk


class FakeDiskBuilder:
    """Pretends to build disks under a notional folder."""

    def __init__(self, known_bases: frozenset[str] = frozenset({"debian:11", "debian:12"})) -> None:
        self.known_bases = known_bases
        self.prepared: dict[str, list[PreparedDisk]] = {}
        self.drives: dict[str, dict[str, bytes]] = {}
        # How many times each instance's config drive was built.
        self.drive_builds: dict[str, int] = {}
        self.contents: dict[str, list[bytes]] = {}
        self.requests: dict[str, tuple[DiskRequest, ...]] = {}

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskRequest, ...], progress: ProgressCallback
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
        if instance_uuid not in self.contents:
            self.contents[instance_uuid] = [f"base:{d.base}".encode() for d in disks]
        # Every disk spec each instance was prepared with (bases included), latest last.
        self.requests[instance_uuid] = disks
        return result

    async def remove(self, instance_uuid: str) -> None:
        self.prepared.pop(instance_uuid, None)
        self.drives.pop(instance_uuid, None)
        self.drive_builds.pop(instance_uuid, None)
        self.contents.pop(instance_uuid, None)
        self.requests.pop(instance_uuid, None)

    async def config_drive(self, spec: DomainRequest) -> PreparedDisk | None:
        if spec.configdrive == "none":
            return None
        if spec.configdrive != "openstack-disk":
            raise DiskError(f"unknown config drive kind {spec.configdrive!r}")
        self.drives[spec.uuid] = drive_files(spec, random_seed=os.urandom(RANDOM_SEED_BYTES))
        self.drive_builds[spec.uuid] = self.drive_builds.get(spec.uuid, 0) + 1
        return PreparedDisk(
            path=Path(f"/fake/{spec.uuid}/config.iso"),
            bus="virtio",
            device="disk",
            format="raw",
            readonly=True,
        )

    async def firmware_template(self, ref: str, progress: ProgressCallback) -> Path:
        if ref.startswith("sf://blob/"):
            return Path("/fake/cache") / f"blob-{ref.removeprefix('sf://blob/')}"
        return local_firmware(ref)

    async def export(
        self,
        instance_uuid: str,
        disks: tuple[DiskRequest, ...],
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> tuple[str, ...]:
        contents = self.contents.get(instance_uuid)
        if contents is None or len(contents) < len(disks):
            raise DiskError(f"instance {instance_uuid} has no disks on this node")
        blobs = []
        for index, spec in enumerate(disks):
            if spec.type == "cdrom":
                blobs.append("")
                continue
            blobs.append(await sink.upload(_one(contents[index])))
            progress(f"disk {index} exported")
        return tuple(blobs)

    async def snapshot(
        self,
        instance_uuid: str,
        index: int,
        source: Path | None,
        thin: bool,
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> SnapshotCopy:
        contents = self.contents.get(instance_uuid)
        if contents is None or index >= len(contents):
            raise DiskError(f"disk {index} of instance {instance_uuid} is not on this node")
        base_blob = ""
        if thin:
            base = self.requests[instance_uuid][index].base
            if not base.startswith("sf://blob/"):
                raise DiskError(
                    f"disk {index} was not made from a blob, so it cannot have a thin snapshot"
                )
            base_blob = base.removeprefix("sf://blob/")
        blob = await sink.upload(_one(contents[index]))
        progress(f"disk {index} copied")
        return SnapshotCopy(blob, len(contents[index]), base_blob)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
