"""The node's disk snapshots on the fake hypervisor: freeze, overlay, copy, commit, and failures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.nodewire.commands import CreateDomain, PowerDomain, SnapshotDisk
from common.nodewire.convert import command_from_pb, command_to_pb, result_from_pb, result_to_pb
from common.nodewire.devices import spec_device_names
from common.nodewire.domain import DiskRequest, DomainRequest
from common.nodewire.messages import NodeEvent, Result, SnapshotResult
from common.nodewire.power import PowerAction
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.executor import Executor
from nodeagent.guest.ops import GuestOps
from nodeagent.hypervisor.domain_xml import build_domain_xml
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import PreparedDisk
from protos import node_pb2

UUID = "0b6f3f6e-9a64-4b8e-a6c1-7d0d7c2b1f10"
BASE = "sf://blob/7a1e0c8e-55d1-4d5c-9a43-2b0c5a6f0e11"
SPEC = DomainRequest(
    uuid=UUID,
    name="vm",
    disks=(DiskRequest(size_gb=1, base=BASE), DiskRequest(size_gb=2, base="")),
)


class Sink:
    """Blob uploads kept in memory, each noting whether the guest was frozen then."""

    def __init__(self, guest: FakeGuestOps) -> None:
        self.guest = guest
        self.blobs: dict[str, bytes] = {}
        self.fail = False

    async def upload(self, chunks: AsyncIterator[bytes]) -> str:
        data = b"".join([chunk async for chunk in chunks])
        assert not self.guest.frozen, "copied while the guest was frozen"
        if self.fail:
            raise ConnectionError("the control plane went away")
        uuid = f"00000000-0000-4000-8000-{len(self.blobs):012d}"
        self.blobs[uuid] = data
        return uuid


class FakeGuestOps(GuestOps):
    """A guest agent that freezes (when ready) and records it."""

    def __init__(self) -> None:
        self.ready = True
        self.frozen = False
        self.calls: list[str] = []

    async def freeze(self, uuid: str, timeout: float) -> tuple[tuple[str, ...], str]:
        self.calls.append("freeze")
        if not self.ready:
            return (), "the guest agent is not ready"
        self.frozen = True
        return ("/",), ""

    async def thaw(self, uuid: str) -> str:
        self.calls.append("thaw")
        self.frozen = False
        return ""


Setup = tuple[Executor, FakeHypervisor, FakeGuestOps, Sink, list[NodeEvent]]


@pytest.fixture
async def node(tmp_path: Path) -> Setup:
    """An executor on fakes with the instance's domain running."""
    hypervisor, disks, guest = FakeHypervisor(), FakeDiskBuilder(), FakeGuestOps()
    sink = Sink(guest)
    events: list[NodeEvent] = []
    run = Executor(hypervisor, disks, tmp_path, events.append, guestops=guest, blobs=sink)
    created = await run.execute(CreateDomain("c1", UUID, SPEC))
    assert created.ok, created.error
    disks.contents[UUID][0] = b"the guest's data"
    return run, hypervisor, guest, sink, events


def snap(cid: str, device: str = "vda", index: int = 0, thin: bool = False) -> SnapshotDisk:
    """A snapshot command for one disk."""
    return SnapshotDisk(cid, UUID, index, device, thin, BASE if thin else "")


def chain(hypervisor: FakeHypervisor, device: str = "vda") -> list[str]:
    """The disk's files by name, active first."""
    return [p.name for p in hypervisor.chains[UUID][device]]


async def test_a_running_guest_is_frozen_around_the_snapshot_and_the_chain_is_one_file_again(
    node: Setup,
) -> None:
    """Frozen, snapshotted, thawed before the copy; the blob holds the disk; one file after."""
    run, hypervisor, guest, sink, events = node
    result = await run.execute(snap("s1"))
    assert result.ok, result.error
    assert result.snapshot is not None
    assert result.snapshot.consistency == "frozen" and result.snapshot.frozen == ("/",)
    assert sink.blobs[result.snapshot.blob_uuid] == b"the guest's data"
    assert guest.calls == ["freeze", "thaw"]
    assert chain(hypervisor) == ["disk0.qcow2"]
    messages = [e.message for e in events]
    assert "snapshotting disk vda" in messages and "disk vda snapshotted (frozen)" in messages


async def test_without_a_ready_agent_the_snapshot_is_crash_consistent(node: Setup) -> None:
    """A guest whose agent does not answer is snapshotted anyway, and the result says so."""
    run, hypervisor, guest, _sink, _events = node
    guest.ready = False
    result = await run.execute(snap("s1"))
    assert result.ok and result.snapshot is not None
    assert result.snapshot.consistency == "crash-consistent"
    assert result.snapshot.note == "the guest agent is not ready"
    assert chain(hypervisor) == ["disk0.qcow2"]


async def test_a_stopped_guest_is_copied_without_freeze_or_overlay(node: Setup) -> None:
    """Powered off: no agent call, no overlay; the second disk by its device name."""
    run, hypervisor, guest, sink, _events = node
    assert (await run.execute(PowerDomain("p1", UUID, PowerAction.OFF))).ok
    hypervisor.failures["snapshot"] = 1  # would fail if an overlay were tried
    result = await run.execute(snap("s1", "vdc", 1))
    assert result.ok, result.error
    assert result.snapshot is not None and result.snapshot.consistency == "stopped"
    assert sink.blobs[result.snapshot.blob_uuid] == b"base:"
    assert guest.calls == []


async def test_a_failed_snapshot_thaws_and_changes_nothing(node: Setup) -> None:
    """The external snapshot fails: thawed, an error, the chain untouched."""
    run, hypervisor, guest, _sink, _events = node
    hypervisor.failures["snapshot"] = 1
    result = await run.execute(snap("s1"))
    assert not result.ok and "fake snapshot failure" in result.error
    assert guest.calls == ["freeze", "thaw"] and not guest.frozen
    assert chain(hypervisor) == ["disk0.qcow2"]


async def test_a_failed_upload_still_commits_the_overlay_back(node: Setup) -> None:
    """The copy cannot be uploaded: an error, and the disk is back on one file."""
    run, hypervisor, _guest, sink, _events = node
    sink.fail = True
    result = await run.execute(snap("s1"))
    assert not result.ok and "went away" in result.error
    assert chain(hypervisor) == ["disk0.qcow2"]


async def test_a_pivot_that_fails_once_is_tried_again(node: Setup) -> None:
    """One failed pivot: tried again, the snapshot succeeds, one file after."""
    run, hypervisor, _guest, _sink, _events = node
    hypervisor.failures["pivot"] = 1
    result = await run.execute(snap("s1"))
    assert result.ok, result.error
    assert chain(hypervisor) == ["disk0.qcow2"]


async def test_a_pivot_that_keeps_failing_is_reported_and_healed_by_the_next_snapshot(
    node: Setup,
) -> None:
    """Every pivot fails: an error naming the overlay; the next snapshot commits it first."""
    run, hypervisor, _guest, _sink, events = node
    hypervisor.failures["pivot"] = 3
    result = await run.execute(snap("s1"))
    assert not result.ok and "could not be committed back" in result.error
    assert chain(hypervisor) == ["disk0.snapshot-overlay.qcow2", "disk0.qcow2"]
    assert "disk vda still runs on its snapshot overlay" in [e.message for e in events]
    result = await run.execute(snap("s2"))
    assert result.ok, result.error
    assert chain(hypervisor) == ["disk0.qcow2"]


async def test_thin_snapshots_name_their_base_blob(node: Setup) -> None:
    """A thin snapshot of a disk made from a blob names it; of a blank disk, it is refused."""
    run, _hypervisor, _guest, _sink, _events = node
    result = await run.execute(snap("s1", thin=True))
    assert result.ok and result.snapshot is not None
    assert result.snapshot.base_blob == BASE.removeprefix("sf://blob/")
    result = await run.execute(snap("s2", "vdc", 1, thin=True))
    assert not result.ok and "cannot have a thin snapshot" in result.error


async def test_an_unknown_device_is_an_error(node: Setup) -> None:
    """A device the domain does not have is refused."""
    run, _hypervisor, guest, _sink, _events = node
    result = await run.execute(snap("s1", "vdz", 0))
    assert not result.ok and "no disk vdz" in result.error
    assert guest.calls == []


async def test_snapshot_command_and_result_cross_the_wire() -> None:
    """SnapshotDisk and its result survive protobuf both ways."""
    command = SnapshotDisk("c", UUID, 1, "vdc", True, BASE, 7.5, False)
    assert command_from_pb(command_to_pb(command)) == command
    result = Result(
        "c", UUID, True, snapshot=SnapshotResult("b", "frozen", ("/", "/data"), "", 9, "x", "vdc")
    )
    out = node_pb2.CommandResult()
    result_to_pb(result, out)
    assert result_from_pb(out) == result


def test_device_names_agree_with_the_domain_xml() -> None:
    """The control plane's device names are the ones the domain XML gives, config drive aside."""
    disks = [("virtio", "disk"), ("sata", "disk"), ("virtio", "cdrom"), ("nvme", "disk")]
    spec = DomainRequest(uuid=UUID, name="vm")
    prepared = [PreparedDisk(Path(f"/d{i}"), bus, device) for i, (bus, device) in enumerate(disks)]
    prepared.insert(1, PreparedDisk(Path("/config.iso"), "virtio", "disk", "raw", True))
    xml = build_domain_xml(
        spec, prepared, console_log=Path("/console.log"), domain_type="qemu", socket_dir=Path("/s")
    )
    root = ET.fromstring(xml)
    targets = {
        d.find("source").get("file"): d.find("target").get("dev")  # type: ignore[union-attr]
        for d in root.iterfind("./devices/disk")
    }
    expected = [targets[f"/d{i}"] for i in range(len(disks))]
    assert spec_device_names(disks, config_drive=True) == expected
