"""The disk-builder contract, run against FakeDiskBuilder and Qcow2DiskBuilder.

Behaviour both must show is parametrized; what only a real builder can show
(files, sizes, backing chains, fetching over HTTP) is tested on Qcow2DiskBuilder
alone, with a local HTTP server on 127.0.0.1 standing in for the image host.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from common.nodewire.domain import DiskRequest
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskBuilder, DiskError
from nodeagent.disks.qcow2 import Qcow2DiskBuilder
from tests.contract.conftest import ImageServer, qemu_img

GIB = 1024**3
UUID = "3c0e4c3a-5f7e-4a8e-9d1f-0b6a2c9d8e71"


def info(path: Path) -> dict[str, object]:
    """qemu-img info of a file, as a dict."""
    return dict(json.loads(qemu_img("info", "--output=json", str(path))))


def real_builder(
    root: Path, template: str = "http://127.0.0.1:9/{name}-{version}"
) -> Qcow2DiskBuilder:
    """A Qcow2DiskBuilder with its folders under root."""
    return Qcow2DiskBuilder(root / "instances", root / "cache", template)


@pytest.fixture(params=["fake", "qcow2"])
def builder(
    request: pytest.FixtureRequest, work_dir: Path, image_server: ImageServer
) -> DiskBuilder:
    """The disk builder under test; the real one resolves shorthands on the local server."""
    if request.param == "fake":
        return FakeDiskBuilder()
    return real_builder(work_dir, image_server.url("{name}-{version}.qcow2"))


def no_progress(message: str) -> None:
    """A progress callback that ignores messages."""


async def test_missing_base_raises(builder: DiskBuilder) -> None:
    """A base that does not exist raises a DiskError naming it, not retryable."""
    with pytest.raises(DiskError, match=re.escape("/no/such/base.qcow2")) as caught:
        await builder.prepare(
            UUID, (DiskRequest(size_gb=1, base="/no/such/base.qcow2"),), no_progress
        )
    assert caught.value.retryable is False


async def test_blank_disk(builder: DiskBuilder) -> None:
    """A disk without a base is prepared as a disk on the asked-for bus."""
    (disk,) = await builder.prepare(UUID, (DiskRequest(size_gb=2, bus="scsi"),), no_progress)
    assert (disk.device, disk.bus) == ("disk", "scsi")
    assert UUID in str(disk.path)


async def test_local_base(builder: DiskBuilder, make_image: Callable[..., Path]) -> None:
    """An existing local base resolves into one prepared disk per spec, in order."""
    base = make_image("base.qcow2")
    specs = (DiskRequest(size_gb=1, base=str(base)), DiskRequest(size_gb=1, bus="sata"))
    disks = await builder.prepare(UUID, specs, no_progress)
    assert [(d.device, d.bus) for d in disks] == [("disk", "virtio"), ("disk", "sata")]
    assert len({d.path for d in disks}) == 2


async def test_distribution_shorthand(builder: DiskBuilder, image_server: ImageServer) -> None:
    """A name:version shorthand the builder knows resolves to a disk."""
    qemu_img("create", "-q", "-f", "qcow2", str(image_server.folder / "debian-11.qcow2"), "64M")
    (disk,) = await builder.prepare(UUID, (DiskRequest(base="debian:11"),), no_progress)
    assert disk.device == "disk"


async def test_prepare_is_idempotent(builder: DiskBuilder) -> None:
    """Preparing the same instance twice gives the same disks."""
    specs = (DiskRequest(size_gb=1),)
    first = await builder.prepare(UUID, specs, no_progress)
    second = await builder.prepare(UUID, specs, no_progress)
    assert first == second


async def test_cdrom_without_image_raises(builder: DiskBuilder) -> None:
    """A cdrom needs an image to hold."""
    with pytest.raises(DiskError):
        await builder.prepare(UUID, (DiskRequest(type="cdrom"),), no_progress)


async def test_remove_is_idempotent(builder: DiskBuilder) -> None:
    """Removing an instance's disks twice, or an instance never prepared, is fine."""
    await builder.prepare(UUID, (DiskRequest(size_gb=1),), no_progress)
    await builder.remove(UUID)
    await builder.remove(UUID)
    await builder.remove("00000000-0000-0000-0000-000000000000")


class MemoryBlobs:
    """A blob sink and source in memory, standing in for the control plane's BlobService."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    async def upload(self, chunks: AsyncIterator[bytes]) -> str:
        uuid = str(uuidlib.uuid4())
        self.blobs[uuid] = b"".join([c async for c in chunks])
        return uuid

    async def download(self, uuid: str) -> AsyncIterator[bytes]:
        yield self.blobs[uuid]


async def test_export_uploads_each_disk_and_skips_cdroms(
    builder: DiskBuilder, make_image: Callable[..., Path]
) -> None:
    """Export gives one blob per disk, in order, and "" for a cdrom (not copied)."""
    iso = make_image("image.iso")
    specs = (DiskRequest(size_gb=1), DiskRequest(base=str(iso), type="cdrom"), DiskRequest(1))
    await builder.prepare(UUID, specs, no_progress)
    sink = MemoryBlobs()
    messages: list[str] = []
    blobs = await builder.export(UUID, specs, sink, messages.append)
    assert len(blobs) == 3 and blobs[1] == ""
    assert blobs[0] in sink.blobs and blobs[2] in sink.blobs
    assert messages


async def test_export_of_an_instance_without_disks_raises(builder: DiskBuilder) -> None:
    """An instance with no disk files here cannot be exported."""
    with pytest.raises(DiskError):
        await builder.export(UUID, (DiskRequest(size_gb=1),), MemoryBlobs(), no_progress)


# -- Qcow2DiskBuilder only ------------------------------------------------------


def qemu_io(path: Path, command: str) -> None:
    """Write into an image as a guest would (qemu-io)."""
    subprocess.run(["qemu-io", "-c", command, str(path)], capture_output=True, check=True)


async def test_export_flattens_the_backing_chain(
    work_dir: Path, make_image: Callable[..., Path]
) -> None:
    """The exported blob is a standalone qcow2 holding the base's and the overlay's data,
    and a disk made from it on another node reads the same."""
    base = make_image("base.qcow2", "128M")
    qemu_io(base, "write -P 0x11 0 1M")
    builder = real_builder(work_dir / "a")
    specs = (DiskRequest(size_gb=0, base=str(base)),)
    (disk,) = await builder.prepare(UUID, specs, no_progress)
    qemu_io(disk.path, "write -P 0x22 64M 1M")
    sink = MemoryBlobs()
    (blob,) = await builder.export(UUID, specs, sink, no_progress)
    exported = work_dir / "exported.qcow2"
    exported.write_bytes(sink.blobs[blob])
    data = info(exported)
    assert data["format"] == "qcow2" and "backing-filename" not in data
    qemu_img("compare", str(disk.path), str(exported))
    assert not list(disk.path.parent.glob(".*export*"))
    target = Qcow2DiskBuilder(work_dir / "b" / "instances", work_dir / "b" / "cache", "", sink)
    (moved,) = await target.prepare(
        UUID, (DiskRequest(size_gb=0, base=f"sf://blob/{blob}"),), no_progress
    )
    qemu_img("compare", str(disk.path), str(moved.path))


async def test_blank_disk_file(work_dir: Path) -> None:
    """A blank disk is a qcow2 file of size_gb without a backing file."""
    builder = real_builder(work_dir)
    (disk,) = await builder.prepare(UUID, (DiskRequest(size_gb=2),), no_progress)
    assert disk.path == work_dir / "instances" / UUID / "disk0.qcow2"
    data = info(disk.path)
    assert (data["format"], data["virtual-size"]) == ("qcow2", 2 * GIB)
    assert "backing-filename" not in data
    assert disk.format == "qcow2"


async def test_blank_disk_without_size_raises(work_dir: Path) -> None:
    """A blank disk of size 0 cannot be made."""
    with pytest.raises(DiskError, match="no size"):
        await real_builder(work_dir).prepare(UUID, (DiskRequest(),), no_progress)


@pytest.mark.parametrize(
    ("size_gb", "expected"),
    [(0, 2 * GIB), (1, 2 * GIB), (3, 3 * GIB)],
    ids=["as-base", "no-shrink", "grow"],
)
async def test_overlay_on_local_base(
    work_dir: Path, make_image: Callable[..., Path], size_gb: int, expected: int
) -> None:
    """A local base gets a qcow2 overlay backed by it, never smaller than the base."""
    base = make_image("base.qcow2", "2G")
    builder = real_builder(work_dir)
    (disk,) = await builder.prepare(
        UUID, (DiskRequest(size_gb=size_gb, base=str(base)),), no_progress
    )
    data = info(disk.path)
    assert data["virtual-size"] == expected
    assert data["backing-filename"] == str(base)
    assert data["backing-filename-format"] == "qcow2"


async def test_raw_base_format_is_detected(work_dir: Path) -> None:
    """The overlay names the base's real format (raw here) as its backing format."""
    base = work_dir / "base.raw"
    qemu_img("create", "-q", "-f", "raw", str(base), "64M")
    (disk,) = await real_builder(work_dir).prepare(
        UUID, (DiskRequest(base=str(base)),), no_progress
    )
    assert info(disk.path)["backing-filename-format"] == "raw"


async def test_existing_overlay_is_reused(work_dir: Path) -> None:
    """A second prepare leaves the existing overlay file untouched."""
    builder = real_builder(work_dir)
    (disk,) = await builder.prepare(UUID, (DiskRequest(size_gb=1),), no_progress)
    before = disk.path.stat()
    (again,) = await builder.prepare(UUID, (DiskRequest(size_gb=1),), no_progress)
    after = again.path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


async def test_cdrom_uses_base_in_place(work_dir: Path) -> None:
    """A cdrom is the base file itself, read-only, in its own format."""
    iso = work_dir / "config.iso"
    iso.write_bytes(b"\0" * 65536)
    (disk,) = await real_builder(work_dir).prepare(
        UUID, (DiskRequest(base=str(iso), type="cdrom"),), no_progress
    )
    assert (disk.path, disk.device, disk.format, disk.bus) == (iso, "cdrom", "raw", "virtio")


async def test_base_with_backing_file_is_refused(
    work_dir: Path, make_image: Callable[..., Path]
) -> None:
    """A base image that itself points at a backing file is refused."""
    inner = make_image("inner.qcow2")
    outer = work_dir / "outer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(inner), "-F", "qcow2", str(outer))
    with pytest.raises(DiskError, match="backing file"):
        await real_builder(work_dir).prepare(UUID, (DiskRequest(base=str(outer)),), no_progress)


async def test_remove_deletes_the_instance_folder(work_dir: Path) -> None:
    """remove deletes the instance's folder and keeps the cache."""
    builder = real_builder(work_dir)
    await builder.prepare(UUID, (DiskRequest(size_gb=1),), no_progress)
    (work_dir / "cache").mkdir(exist_ok=True)
    await builder.remove(UUID)
    assert not (work_dir / "instances" / UUID).exists()
    assert (work_dir / "cache").exists()


async def test_http_fetch_once_with_progress(
    work_dir: Path, image_server: ImageServer, make_image: Callable[..., Path]
) -> None:
    """A URL base is fetched once into the cache, with progress, even for two prepares at once."""
    base = make_image("cloud.qcow2", "1G", folder=image_server.folder)
    qemu_img("resize", "-q", str(base), "2G")
    url = image_server.url("cloud.qcow2")
    builder = real_builder(work_dir)
    messages: list[str] = []
    specs = (DiskRequest(base=url),)
    first, second = await asyncio.gather(
        builder.prepare(UUID, specs, messages.append),
        builder.prepare("9a1d2f3e-0000-4000-8000-000000000002", specs, messages.append),
    )
    assert image_server.requests == {"/cloud.qcow2": 1}
    assert messages and messages[-1] == f"Fetching required image {url}, 100% complete"
    assert all(m.startswith(f"Fetching required image {url}, ") for m in messages)
    cached = list((work_dir / "cache").iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == base.read_bytes()
    for disk in (first[0], second[0]):
        data = info(disk.path)
        assert data["backing-filename"] == str(cached[0])
        assert data["virtual-size"] == 2 * GIB


async def test_shorthand_uses_the_url_template(
    work_dir: Path, image_server: ImageServer, make_image: Callable[..., Path]
) -> None:
    """debian:11 is fetched from the template's URL and progress names the shorthand."""
    make_image("debian-11-bullseye.qcow2", folder=image_server.folder)
    builder = real_builder(work_dir, image_server.url("{name}-{version}-{codename}.qcow2"))
    messages: list[str] = []
    await builder.prepare(UUID, (DiskRequest(base="debian:11"),), messages.append)
    assert image_server.requests == {"/debian-11-bullseye.qcow2": 1}
    assert messages[-1] == "Fetching required image debian:11, 100% complete"


async def test_http_404_is_not_retryable(work_dir: Path, image_server: ImageServer) -> None:
    """A base URL that answers 404 raises a DiskError naming the URL, not retryable."""
    url = image_server.url("missing.qcow2")
    with pytest.raises(DiskError, match=re.escape(url)) as caught:
        await real_builder(work_dir).prepare(UUID, (DiskRequest(base=url),), no_progress)
    assert caught.value.retryable is False
    assert not list((work_dir / "cache").iterdir())


async def test_unreachable_server_is_retryable(work_dir: Path) -> None:
    """A base URL whose server refuses connections raises a retryable DiskError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/image.qcow2"
    with pytest.raises(DiskError, match=re.escape(url)) as caught:
        await real_builder(work_dir).prepare(UUID, (DiskRequest(base=url),), no_progress)
    assert caught.value.retryable is True


async def test_unknown_reference_raises(work_dir: Path) -> None:
    """A base that is neither a path, a URL nor a shorthand raises DiskError."""
    with pytest.raises(DiskError, match="does not exist"):
        await real_builder(work_dir).prepare(
            UUID, (DiskRequest(base="relative/path"),), no_progress
        )


async def test_snapshots_standalone_and_thin_boot_elsewhere(
    work_dir: Path, make_image: Callable[..., Path]
) -> None:
    """A disk made from a blob snapshots into a standalone copy, or a thin overlay naming its
    base blob that another node fetches with its base and reads the same; other backing
    files stay refused."""
    base = make_image("base.qcow2", "128M")
    qemu_io(base, "write -P 0x11 0 1M")
    sink = MemoryBlobs()
    base_blob = await sink.upload(_chunks(base.read_bytes()))
    specs = (DiskRequest(size_gb=0, base=f"sf://blob/{base_blob}"),)
    builder = Qcow2DiskBuilder(work_dir / "a" / "instances", work_dir / "a" / "cache", "", sink)
    (disk,) = await builder.prepare(UUID, specs, no_progress)
    qemu_io(disk.path, "write -P 0x22 64M 1M")

    full = await builder.snapshot(UUID, 0, None, False, sink, no_progress)
    thin = await builder.snapshot(UUID, 0, None, True, sink, no_progress)
    assert full.base_blob == "" and thin.base_blob == base_blob
    assert thin.size < full.size
    assert not list(disk.path.parent.glob(".*snapshot*"))

    other = Qcow2DiskBuilder(work_dir / "b" / "instances", work_dir / "b" / "cache", "", sink)
    for copy in (full, thin):
        uuid = str(uuidlib.uuid4())
        (made,) = await other.prepare(
            uuid, (DiskRequest(size_gb=0, base=f"sf://blob/{copy.blob_uuid}"),), no_progress
        )
        qemu_img("compare", str(disk.path), str(made.path))
    assert (work_dir / "b" / "cache" / f"blob-{base_blob}").exists()

    with pytest.raises(DiskError, match="cannot have a thin snapshot"):
        blank = (DiskRequest(size_gb=1),)
        await builder.prepare("11111111-1111-4111-8111-111111111111", blank, no_progress)
        await builder.snapshot(
            "11111111-1111-4111-8111-111111111111", 0, None, True, sink, no_progress
        )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
