"""Snapshotting one disk of an instance into a blob, consistent while its guest runs.

For a running guest (``SnapshotDisk``):

1. A leftover overlay of an earlier snapshot whose commit failed is
   committed first (the disk's chain is then one file again).
2. The guest agent syncs and freezes the guest's file systems, when the
   instance has the agent and it answers; otherwise the snapshot is
   crash-consistent, and the result says why.
3. An external disk-only snapshot puts an overlay on the disk: the original
   file is now a stable point in time. The guest is thawed at once.
4. The original is copied into a standalone qcow2 (or, ``thin``, an overlay
   on the disk's base blob) and uploaded to the BlobService.
5. The overlay is committed back into the original (an active commit, then
   a pivot) and deleted; a failed pivot is tried again, twice.

A failure at any step leaves the domain's disk chain as it was: a failed
snapshot changed nothing, and after it the overlay is committed back
whatever happened. Only a commit that keeps failing leaves the domain on the
overlay (the error says so), and the next snapshot of that disk commits it.
A stopped (or crashed) guest needs neither freeze nor overlay: its disk is
copied as it is. A paused guest is snapshotted crash-consistent (its agent
cannot answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from common.nodewire.commands import SnapshotDisk
from common.nodewire.messages import NodeEvent, SnapshotResult
from common.nodewire.power import STOPPED, PowerState
from nodeagent.disks.protocol import BlobSink, DiskBuilder, DiskError
from nodeagent.guest.ops import GuestOps
from nodeagent.hypervisor.protocol import Hypervisor, HypervisorError

log = structlog.get_logger(__name__)

OVERLAY_SUFFIX = ".snapshot-overlay.qcow2"
COMMIT_TRIES = 3


def overlay_for(original: Path) -> Path:
    """Where a disk's snapshot overlay goes: beside its file."""
    return original.with_name(original.stem + OVERLAY_SUFFIX)


class DiskSnapshots:
    """Takes disk snapshots of this node's instances."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        disks: DiskBuilder,
        emit: Callable[[NodeEvent], None],
        clock: Callable[[], float] = time.time,
        guestops: GuestOps | None = None,
        blobs: BlobSink | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.disks = disks
        self.emit = emit
        self.clock = clock
        self.guestops = guestops
        self.blobs = blobs

    def _event(self, uuid: str, message: str, **extra: object) -> None:
        self.emit(NodeEvent(uuid, message, timestamp=self.clock(), extra=dict(extra)))

    async def take(self, command: SnapshotDisk) -> SnapshotResult:
        """Snapshot one disk; DiskError or HypervisorError when it cannot be done."""
        uuid, device = command.instance_uuid, command.device
        state = await self.hypervisor.get_domain(uuid)
        if state is None:
            raise DiskError(f"instance {uuid} has no domain on this node")
        if self.blobs is None:
            raise DiskError("this node cannot upload blobs")
        chain = await self.hypervisor.disk_chain(uuid, device)  # checks the device exists

        def progress(message: str) -> None:
            self._event(uuid, message, device=device)

        started = self.clock()
        self._event(uuid, f"snapshotting disk {device}", device=device)
        if state.power_state in STOPPED:
            copy = await self.disks.snapshot(
                uuid, command.index, None, command.thin, self.blobs, progress
            )
            result = SnapshotResult(
                copy.blob_uuid, "stopped", size=copy.size, base_blob=copy.base_blob, device=device
            )
        else:
            result = await self._running(command, chain, progress)
        self._event(
            uuid,
            f"disk {device} snapshotted ({result.consistency})",
            device=device,
            blob_uuid=result.blob_uuid,
            consistency=result.consistency,
            note=result.note,
            duration=round(self.clock() - started, 3),
        )
        return result

    async def _running(
        self, command: SnapshotDisk, chain: list[Path], progress: Callable[[str], None]
    ) -> SnapshotResult:
        uuid, device = command.instance_uuid, command.device
        assert self.blobs is not None
        if len(chain) > 1 and chain[0].name.endswith(OVERLAY_SUFFIX):
            progress(f"committing the overlay an earlier snapshot of {device} left")
            await self._commit(uuid, device, chain[0])
            chain = await self.hypervisor.disk_chain(uuid, device)
        original = chain[0]
        overlay = overlay_for(original)
        frozen: tuple[str, ...] = ()
        note = ""
        state = await self.hypervisor.get_domain(uuid)
        if state is not None and state.power_state == PowerState.PAUSED:
            note = "the guest is paused"
        elif not command.agent:
            note = "the instance has no agent channel"
        elif self.guestops is None:
            note = "this node has no guest agent support"
        else:
            frozen, note = await self.guestops.freeze(uuid, command.freeze_timeout)
            if frozen:
                progress(f"froze {', '.join(frozen)}")
        try:
            await self.hypervisor.snapshot_disk(uuid, device, overlay)
        finally:
            if frozen and self.guestops is not None:
                late = await self.guestops.thaw(uuid)
                if late:
                    frozen, note = (), late
                progress("thawed")
        try:
            copy = await self.disks.snapshot(
                uuid, command.index, original, command.thin, self.blobs, progress
            )
        finally:
            await self._commit(uuid, device, overlay)
        return SnapshotResult(
            copy.blob_uuid,
            "frozen" if frozen else "crash-consistent",
            frozen,
            note,
            copy.size,
            copy.base_blob,
            device,
        )

    async def _commit(self, uuid: str, device: str, overlay: Path) -> None:
        """Commit the overlay back (a few tries); HypervisorError if it stays."""
        for attempt in range(1, COMMIT_TRIES + 1):
            try:
                await self.hypervisor.commit_disk(uuid, device, overlay)
                return
            except HypervisorError as exc:
                log.warning(
                    "snapshot commit failed",
                    uuid=uuid,
                    device=device,
                    attempt=attempt,
                    error=str(exc),
                )
                last = exc
        self._event(uuid, f"disk {device} still runs on its snapshot overlay", device=device)
        raise HypervisorError(
            f"disk {device} could not be committed back ({last}); it runs on {overlay.name} "
            "until the next snapshot of it commits that"
        )
