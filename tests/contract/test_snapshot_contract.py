"""The hypervisor's disk snapshot contract, on FakeHypervisor and LibvirtHypervisor.

A running domain's disk gets an external overlay (its file is then a stable
point in time that can be copied), and committing the overlay back leaves
the disk on one file again, live and in the persistent definition.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from nodeagent.hypervisor.protocol import HypervisorError
from tests.contract.conftest import Backend, qemu_img, virsh


async def test_snapshot_overlay_then_commit_leaves_one_file(backend: Backend) -> None:
    """Snapshot puts an overlay on top; the original can be copied; commit removes it again."""
    spec, state = await backend.boot()
    assert state.power_state == "on"
    hypervisor = backend.hypervisor
    before = await hypervisor.disk_chain(spec.uuid, "vda")
    original = before[0]
    assert original.name == "disk0.qcow2"
    overlay = original.with_name("disk0.snapshot-overlay.qcow2")

    await hypervisor.snapshot_disk(spec.uuid, "vda", overlay)
    assert await hypervisor.disk_chain(spec.uuid, "vda") == [overlay, *before]
    if backend.kind == "libvirt":
        copy = original.with_name("copy.qcow2")
        qemu_img("convert", "-q", "-U", "-O", "qcow2", str(original), str(copy))
        assert "backing-filename" not in qemu_img("info", "--output=json", str(copy))

    await hypervisor.commit_disk(spec.uuid, "vda", overlay)
    assert await hypervisor.disk_chain(spec.uuid, "vda") == before
    with pytest.raises(HypervisorError):
        await hypervisor.commit_disk(spec.uuid, "vda", overlay)  # nothing to commit now
    if backend.kind == "libvirt":
        assert not overlay.exists()
        inactive = virsh("dumpxml", "--inactive", f"mc-{spec.uuid}").stdout
        sources = [s.get("file") for s in ET.fromstring(inactive).iterfind("./devices/disk/source")]
        assert str(overlay) not in sources and str(original) in sources


async def test_unknown_disks_are_refused(backend: Backend) -> None:
    """A device the domain does not have is a HypervisorError."""
    spec, _state = await backend.boot()
    with pytest.raises(HypervisorError):
        await backend.hypervisor.disk_chain(spec.uuid, "vdq")
