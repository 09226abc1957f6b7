"""The config-drive and NVRAM-template half of the disk-builder contract, fake and real.

What both builders must do is parametrized; that the real one writes an ISO
9660 image labelled ``config-2`` holding the files is read back with
``isoinfo`` (Debian's genisoimage package).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.nodewire.domain import DomainRequest
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskBuilder, DiskError
from nodeagent.disks.qcow2 import Qcow2DiskBuilder

UUID = "3c0e4c3a-5f7e-4a8e-9d1f-0b6a2c9d8e71"
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BLOB = "0b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


class Blobs:
    """A blob source holding one blob."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def download(self, uuid: str) -> AsyncIterator[bytes]:
        if uuid != BLOB:
            raise KeyError(uuid)
        yield self.content


@pytest.fixture(params=["fake", "qcow2"])
def builder(request: pytest.FixtureRequest, work_dir: Path) -> DiskBuilder:
    """The disk builder under test."""
    if request.param == "fake":
        return FakeDiskBuilder()
    return Qcow2DiskBuilder(
        work_dir / "instances", work_dir / "cache", "http://127.0.0.1:9/{name}", Blobs(b"vars")
    )


def spec(**overrides: object) -> DomainRequest:
    """An instance spec with a config drive."""
    fields: dict[str, object] = {"uuid": UUID, "name": "cd-1", "ssh_key": "ssh-ed25519 AAAA k"}
    fields.update(overrides)
    return DomainRequest(**fields)  # type: ignore[arg-type]


def no_progress(message: str) -> None:
    """A progress callback that ignores messages."""


def isoinfo(image: Path, *args: str) -> str:
    """Run isoinfo on an image and return its output."""
    return subprocess.run(
        ["isoinfo", "-i", str(image), *args], capture_output=True, text=True, check=True
    ).stdout


async def test_config_drive_is_a_read_only_raw_disk(builder: DiskBuilder) -> None:
    """The drive is a read-only raw virtio disk in the instance's folder."""
    drive = await builder.config_drive(spec())
    assert drive is not None
    assert (drive.device, drive.bus, drive.format, drive.readonly) == (
        "disk",
        "virtio",
        "raw",
        True,
    )
    assert UUID in str(drive.path)


async def test_no_config_drive_when_none_is_asked(builder: DiskBuilder) -> None:
    """configdrive 'none' gives no drive."""
    assert await builder.config_drive(spec(configdrive="none")) is None


async def test_unknown_config_drive_kind_raises(builder: DiskBuilder) -> None:
    """An unknown kind of config drive is a DiskError, not retryable."""
    with pytest.raises(DiskError, match="floppy") as caught:
        await builder.config_drive(spec(configdrive="floppy"))
    assert caught.value.retryable is False


async def test_bad_user_data_raises(builder: DiskBuilder) -> None:
    """User data that is not base64 is a DiskError."""
    with pytest.raises(DiskError, match="base64"):
        await builder.config_drive(spec(user_data="%%%"))


async def test_rebuilding_gives_the_same_drive(builder: DiskBuilder) -> None:
    """Building twice gives the same disk (the content is fresh, the path stays)."""
    assert await builder.config_drive(spec()) == await builder.config_drive(spec())


async def test_firmware_template_from_the_ovmf_folder(builder: DiskBuilder) -> None:
    """A template in the OVMF folder is used in place."""
    if not OVMF_VARS.exists():
        pytest.fail("the ovmf package is not installed (tools/install.sh installs it)")
    assert await builder.firmware_template(str(OVMF_VARS), no_progress) == OVMF_VARS


@pytest.mark.parametrize("ref", ["/etc/shadow", "/usr/share/OVMF/no-such.fd", "vars.fd"])
async def test_firmware_template_elsewhere_is_refused(builder: DiskBuilder, ref: str) -> None:
    """Host files outside the firmware folders, missing files and relative paths are refused."""
    with pytest.raises(DiskError):
        await builder.firmware_template(ref, no_progress)


async def test_firmware_template_from_a_blob(builder: DiskBuilder) -> None:
    """An sf://blob/UUID template becomes a local file named for the blob."""
    path = await builder.firmware_template(f"sf://blob/{BLOB}", no_progress)
    assert BLOB in path.name


# -- Qcow2DiskBuilder only ------------------------------------------------------


async def test_real_drive_is_an_iso_labelled_config_2(work_dir: Path) -> None:
    """The real drive is ISO 9660, label config-2, holding meta data and decoded user data."""
    builder = Qcow2DiskBuilder(work_dir / "instances", work_dir / "cache", "")
    user_data = b"#!/bin/sh\necho hello\n"
    drive = await builder.config_drive(spec(user_data=base64.b64encode(user_data).decode()))
    assert drive is not None
    assert drive.path == work_dir / "instances" / UUID / "config.iso"
    assert "Volume id: config-2" in isoinfo(drive.path, "-d")
    meta = json.loads(isoinfo(drive.path, "-R", "-x", "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == UUID and meta["hostname"] == "cd-1"
    assert meta["public_keys"] == {"mykey": "ssh-ed25519 AAAA k"}
    assert isoinfo(drive.path, "-R", "-x", "/openstack/latest/user_data") == user_data.decode()
    assert oct(drive.path.stat().st_mode & 0o777) == "0o644"


async def test_real_drive_is_rebuilt_with_fresh_content(work_dir: Path) -> None:
    """Each build writes a new image (a new random seed) and leaves no scratch files."""
    builder = Qcow2DiskBuilder(work_dir / "instances", work_dir / "cache", "")
    seeds = []
    for _ in range(2):
        drive = await builder.config_drive(spec())
        assert drive is not None
        meta = json.loads(isoinfo(drive.path, "-R", "-x", "/openstack/latest/meta_data.json"))
        seeds.append(meta["random_seed"])
    assert seeds[0] != seeds[1]
    assert sorted(p.name for p in (work_dir / "instances" / UUID).iterdir()) == ["config.iso"]


async def test_real_blob_template_is_fetched_into_the_cache(work_dir: Path) -> None:
    """A blob template is downloaded once into the node's cache."""
    builder = Qcow2DiskBuilder(work_dir / "instances", work_dir / "cache", "", Blobs(b"vars"))
    path = await builder.firmware_template(f"sf://blob/{BLOB}", no_progress)
    assert path.parent == work_dir / "cache" and path.read_bytes() == b"vars"
