"""Snapshots of an instance's disks, kept as versions of ``snapshot`` artifacts.

``snapshot(namespace, ref, device, thin, label_name)`` asks the instance's
node to snapshot each disk (every ``disk``-type one, or the named
``device``), one after the other (``SnapshotDisk``: a running guest is
frozen through its agent around an external snapshot, see
``nodeagent.snapshots``), and makes each uploaded blob the newest version of
the artifact ``snapshot:<instance uuid>/<device>``, usable as a disk base as
``sf://snapshot/<instance uuid>/<device>``. Versions are kept as for any
artifact (``max_versions``). With ``label_name`` (one disk only) the blob
becomes the newest version of that label too, as Shaken Fist's client does.

A thin snapshot is an overlay on the disk's base blob: that blob gets one
reference more that is never given back (the error is towards keeping a
blob a snapshot may need). Every step leaves an event on the instance.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from common import sidechannels
from common.nodewire.commands import SnapshotDisk
from common.nodewire.devices import spec_device_names
from common.nodewire.messages import Result, SnapshotResult
from controlplane import lifecycle
from controlplane.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from controlplane.model import Artifact, Instance
from controlplane.nodes import NodeRegistry
from controlplane.reconciler import Reconciler
from controlplane.services.artifacts import ArtifactService
from controlplane.services.instances import InstanceService
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

BLOB_PREFIX = "sf://blob/"
# How long the node may take for one disk (copying and uploading it).
STEP_TIMEOUT = 1800.0
# How long a running guest may stay frozen (the guest caps it at 60 s).
FREEZE_TIMEOUT = 10.0


@dataclass(frozen=True)
class DiskSnapshot:
    """One disk snapshotted: where it is kept and how consistent it is."""

    device: str
    artifact: Artifact
    blob_uuid: str
    consistency: str
    note: str = ""
    frozen: tuple[str, ...] = ()
    thin: bool = False
    base_blob: str = ""
    size: int = 0
    label: Artifact | None = None

    @property
    def source_url(self) -> str:
        """The reference a disk base may use."""
        return self.artifact.source_url

    @property
    def index(self) -> int:
        """The artifact version this snapshot is."""
        return self.artifact.index


@dataclass(frozen=True)
class SnapshotVersion:
    """One kept version of one of an instance's snapshot artifacts."""

    artifact: Artifact
    device: str
    index: int
    blob_uuid: str
    created: float
    size: int
    state: str


def source_url(instance_uuid: str, device: str) -> str:
    """The base reference of an instance disk's snapshots."""
    return f"sf://snapshot/{instance_uuid}/{device}"


class SnapshotService:
    """Snapshots instance disks into artifacts, and lists them."""

    def __init__(
        self,
        records: Records,
        instances: InstanceService,
        artifacts: ArtifactService,
        nodes: NodeRegistry,
        reconciler: Reconciler,
        step_timeout: float = STEP_TIMEOUT,
        freeze_timeout: float = FREEZE_TIMEOUT,
    ) -> None:
        self.records = records
        self.instances = instances
        self.artifacts = artifacts
        self.nodes = nodes
        self.reconciler = reconciler
        self.step_timeout = step_timeout
        self.freeze_timeout = freeze_timeout

    async def snapshot(
        self, namespace: str, ref: str, device: str = "", thin: bool = False, label_name: str = ""
    ) -> list[DiskSnapshot]:
        """Snapshot the instance's disks (or one ``device``); one entry per disk."""
        instance = await self.instances.get(namespace, ref)
        if instance.state != lifecycle.CREATED:
            raise FailedPrecondition(
                f"instance {instance.uuid} is {instance.state}; only a created instance "
                "can be snapshotted"
            )
        if not instance.node:
            raise FailedPrecondition(f"instance {instance.uuid} is on no node")
        chosen = self._disks(instance, device)
        if label_name and len(chosen) != 1:
            raise InvalidArgument("a label names one disk's snapshot: give the device too")
        taken = []
        for index, name in chosen:
            taken.append(await self._one(instance, index, name, thin, label_name))
        return taken

    def _disks(self, instance: Instance, device: str) -> list[tuple[int, str]]:
        """(index in the spec, device name) of each disk to snapshot."""
        disks = instance.spec.disks
        names = spec_device_names(
            ((d.bus, d.type) for d in disks), instance.spec.configdrive != "none"
        )
        found = [(i, n) for i, n in enumerate(names) if disks[i].type == "disk"]
        if device:
            found = [(i, n) for i, n in found if n == device]
            if not found:
                known = ", ".join(n for i, n in enumerate(names) if disks[i].type == "disk")
                raise NotFound(
                    f"instance {instance.uuid} has no disk {device!r} to snapshot "
                    f"(its disks: {known or 'none'})"
                )
        if not found:
            raise FailedPrecondition(f"instance {instance.uuid} has no disk to snapshot")
        return found

    async def _one(
        self, instance: Instance, index: int, device: str, thin: bool, label_name: str
    ) -> DiskSnapshot:
        base = instance.spec.disks[index].base
        if thin and not base.startswith(BLOB_PREFIX):
            raise FailedPrecondition(
                f"disk {device} was not made from a blob or artifact, so it cannot have a "
                "thin snapshot"
            )
        await self._event(instance, f"snapshot of disk {device} requested", "audit", device=device)
        command = SnapshotDisk(
            f"{instance.uuid}/snapshot-{device}-{time.time_ns():x}",
            instance.uuid,
            index,
            device,
            thin,
            base if thin else "",
            self.freeze_timeout,
            sidechannels.AGENT_CHANNEL in instance.spec.side_channels,
        )
        result = await self._ask(instance, command, f"snapshot disk {device}")
        snap = result.snapshot
        if snap is None or not snap.blob_uuid:
            raise FailedPrecondition(f"node {instance.node} sent no snapshot of disk {device}")
        if snap.base_blob:
            await self.artifacts.blobs.reference(snap.base_blob, "a thin snapshot depends on it")
        artifact = await self.artifacts.add_snapshot(
            instance.namespace, instance.uuid, device, snap.blob_uuid
        )
        label = None
        if label_name:
            label = await self.artifacts.from_blob(
                instance.namespace, label_name, snap.blob_uuid, "label"
            )
        await self._event(
            instance,
            f"disk {device} snapshotted as version {artifact.index} of {artifact.source_url} "
            f"({snap.consistency})",
            "audit",
            device=device,
            artifact_uuid=artifact.uuid,
            blob_uuid=snap.blob_uuid,
            consistency=snap.consistency,
            note=snap.note,
        )
        log.info(
            "disk snapshotted",
            uuid=instance.uuid,
            device=device,
            blob=snap.blob_uuid,
            consistency=snap.consistency,
        )
        return _disk_snapshot(device, artifact, snap, thin, label)

    async def _ask(self, instance: Instance, command: SnapshotDisk, what: str) -> Result:
        node = instance.node
        if not self.nodes.connected(node):
            raise Unavailable(f"node {node} is not connected; try again later")
        future = self.nodes.send(node, command)
        try:
            result = await asyncio.wait_for(future, self.step_timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"node {node} did not {what} in time") from exc
        if not result.ok:
            await self._event(instance, f"{what} failed: {result.error}", "status")
            raise FailedPrecondition(f"node {node} could not {what}: {result.error}")
        return result

    async def versions(self, namespace: str, ref: str) -> list[SnapshotVersion]:
        """Every kept version of the instance's snapshots, by device then index."""
        instance = await self.instances.get(namespace, ref)
        found = []
        for art in await self.artifacts.snapshots_of(instance.namespace, instance.uuid):
            device = art.name.partition("/")[2]
            for version in art.versions:
                blob_uuid = str(version["blob_uuid"])
                try:
                    blob = await self.artifacts.blobs.get(blob_uuid)
                    size, state = blob.size, blob.state
                except NotFound:
                    size, state = 0, "deleted"
                found.append(
                    SnapshotVersion(
                        art,
                        device,
                        int(version["index"]),
                        blob_uuid,
                        float(version.get("created_at") or 0.0),
                        size,
                        state,
                    )
                )
        return sorted(found, key=lambda v: (v.device, v.index))

    async def _event(self, instance: Instance, message: str, kind: str, **extra: str) -> None:
        await self.records.add_events(
            instance.namespace, [self.reconciler.event(instance.uuid, message, kind, **extra)]
        )


def _disk_snapshot(
    device: str, artifact: Artifact, snap: SnapshotResult, thin: bool, label: Artifact | None
) -> DiskSnapshot:
    return DiskSnapshot(
        device,
        artifact,
        snap.blob_uuid,
        snap.consistency,
        snap.note,
        snap.frozen,
        thin,
        snap.base_blob,
        snap.size,
        label,
    )
