"""The real disk builder: base images cached once, qcow2 overlays per instance.

A disk's ``base`` is one of:

- an absolute path to an existing file, used in place;
- an ``http://`` or ``https://`` URL, fetched once into the cache (named by
  the SHA-256 of the URL, written to a temporary file and renamed into place,
  so a half-fetched image is never used);
- a distribution shorthand ``name:version`` (``debian:11``), turned into a URL
  by the URL template's ``{name}`` and ``{version}`` placeholders (and
  ``{codename}`` for the Debian releases below, as the default template uses);
- empty, for a blank disk of ``size_gb``.

Each ``disk`` becomes ``<instances_dir>/<uuid>/disk<N>.qcow2``, a qcow2
overlay on the base that is never smaller than the base; a ``cdrom`` uses its
base image read-only in place. Bases are checked with ``qemu-img info``: one
that itself has a backing file is refused, since following it could expose
host files to the guest.

``export`` (moving an instance to another node) flattens each overlay with
``qemu-img convert -O qcow2`` (the backing chain merged into one standalone
image, unallocated space left out) into a temporary file in the instance's
folder, streams it to the blob sink and removes it. ``snapshot`` does the
same for one disk of a running guest from the stable original under its
snapshot overlay (``-U``: QEMU holds the file open), or makes a thin copy:
an overlay on the disk's cached base blob, rebased to the name
``blob-<UUID>`` so that it resolves in any node's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from common.nodewire.domain import DiskRequest, DomainRequest
from nodeagent.disks.configdrive import LABEL, RANDOM_SEED_BYTES, drive_files
from nodeagent.disks.iso import write_iso
from nodeagent.disks.protocol import (
    FIRMWARE_DIRS,
    BlobSink,
    DiskError,
    ProgressCallback,
    SnapshotCopy,
    local_firmware,
)
from nodeagent.hypervisor.protocol import PreparedDisk

log = structlog.get_logger(__name__)

GIB = 1024**3
_SHORTHAND = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9._-]*):(?P<version>[A-Za-z0-9._-]+)$")
# Debian's cloud image URLs name the release both by number and by codename.
DEBIAN_CODENAMES = {
    "9": "stretch",
    "10": "buster",
    "11": "bullseye",
    "12": "bookworm",
    "13": "trixie",
}
_CHUNK = 1024 * 1024
MAX_BLOB_CHAIN = 8  # thin snapshots of thin snapshots, at most this deep
_BLOB_FILE = re.compile(r"^blob-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PROGRESS_STEP_PERCENT = 10
_PROGRESS_INTERVAL_S = 2.0
_FETCH_TIMEOUT_S = 30.0
CONFIG_DRIVE = "config.iso"


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image file."""

    format: str
    virtual_size: int


class BlobSource(Protocol):
    """Where ``sf://blob/UUID`` bases come from (the control plane's blob service)."""

    def download(self, uuid: str) -> AsyncIterator[bytes]: ...


class Qcow2DiskBuilder:
    """Builds instance disks with ``qemu-img`` under ``instances_dir/<uuid>``."""

    def __init__(
        self,
        instances_dir: Path,
        cache_dir: Path,
        url_template: str,
        blobs: BlobSource | None = None,
        *,
        availability_zone: str = "minicloud",
        firmware_dirs: tuple[Path, ...] = FIRMWARE_DIRS,
    ) -> None:
        self.blobs = blobs
        self.availability_zone = availability_zone
        self.firmware_dirs = firmware_dirs
        self.instances_dir = instances_dir
        self.cache_dir = cache_dir
        self.url_template = url_template
        self._fetch_locks: dict[str, asyncio.Lock] = {}
        self._instance_locks: dict[str, asyncio.Lock] = {}
        self._drive_locks: dict[str, asyncio.Lock] = {}

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskRequest, ...], progress: ProgressCallback
    ) -> list[PreparedDisk]:
        """Make the instance's disk files, fetching bases as needed; reuses existing ones."""
        lock = self._instance_locks.setdefault(instance_uuid, asyncio.Lock())
        async with lock:
            folder = self.instances_dir / instance_uuid
            await asyncio.to_thread(_make_folder, folder)
            prepared = []
            for index, spec in enumerate(disks):
                prepared.append(await self._prepare_one(folder, index, spec, progress))
            return prepared

    async def remove(self, instance_uuid: str) -> None:
        """Delete the instance's folder; cached bases stay."""
        folder = self.instances_dir / instance_uuid
        await asyncio.to_thread(shutil.rmtree, folder, True)
        self._instance_locks.pop(instance_uuid, None)
        self._drive_locks.pop(instance_uuid, None)
        log.info("disks removed", uuid=instance_uuid, folder=str(folder))

    async def config_drive(self, spec: DomainRequest) -> PreparedDisk | None:
        """Write the instance's config drive afresh as ``config.iso`` in its folder."""
        if spec.configdrive == "none":
            return None
        if spec.configdrive != "openstack-disk":
            raise DiskError(f"unknown config drive kind {spec.configdrive!r}")
        files = drive_files(
            spec,
            random_seed=os.urandom(RANDOM_SEED_BYTES),
            availability_zone=self.availability_zone,
        )
        # Its own lock, not the disks': the executor builds it while the disks are made.
        lock = self._drive_locks.setdefault(spec.uuid, asyncio.Lock())
        async with lock:
            folder = self.instances_dir / spec.uuid
            await asyncio.to_thread(_make_folder, folder)
            path = folder / CONFIG_DRIVE
            await write_iso(files, path, LABEL)
        log.info("config drive built", uuid=spec.uuid, path=str(path), files=len(files))
        return PreparedDisk(path=path, bus="virtio", device="disk", format="raw", readonly=True)

    async def firmware_template(self, ref: str, progress: ProgressCallback) -> Path:
        """An NVRAM template: a file in a firmware folder, or a blob fetched into the cache."""
        if ref.startswith(BLOB_PREFIX):
            return await self._blob_file(ref, progress)
        return local_firmware(ref, self.firmware_dirs)

    async def export(
        self,
        instance_uuid: str,
        disks: tuple[DiskRequest, ...],
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> tuple[str, ...]:
        """Flatten each disk into a standalone qcow2 and upload it; "" for a cdrom."""
        folder = self.instances_dir / instance_uuid
        lock = self._instance_locks.setdefault(instance_uuid, asyncio.Lock())
        blobs: list[str] = []
        async with lock:
            for index, spec in enumerate(disks):
                if spec.type == "cdrom":
                    blobs.append("")
                    continue
                path = folder / f"disk{index}.qcow2"
                if not path.exists():
                    raise DiskError(f"disk {index} of instance {instance_uuid} is not on this node")
                blobs.append(await self._export_one(path, index, sink, progress))
        return tuple(blobs)

    async def _export_one(
        self, path: Path, index: int, sink: BlobSink, progress: ProgressCallback
    ) -> str:
        flat = path.with_name(f".{path.stem}.export.qcow2")
        started = time.monotonic()
        try:
            progress(f"flattening disk {index}")
            await _qemu_img("convert", "-q", "-O", "qcow2", str(path), str(flat))
            size = (await asyncio.to_thread(flat.stat)).st_size
            progress(f"uploading disk {index} ({size // (1024 * 1024)} MiB)")
            try:
                blob = await sink.upload(_file_chunks(flat))
            except DiskError:
                raise
            except Exception as exc:
                raise DiskError(f"cannot upload disk {index}: {exc}", retryable=True) from exc
        finally:
            flat.unlink(missing_ok=True)
        log.info(
            "disk exported",
            path=str(path),
            blob=blob,
            bytes=size,
            seconds=round(time.monotonic() - started, 2),
        )
        return blob

    async def snapshot(
        self,
        instance_uuid: str,
        index: int,
        source: Path | None,
        thin: bool,
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> SnapshotCopy:
        """Convert one disk (or the stable ``source`` under its overlay) into a blob."""
        disk = self.instances_dir / instance_uuid / f"disk{index}.qcow2"
        path = source or disk
        if not path.exists():
            raise DiskError(f"disk {index} of instance {instance_uuid} is not on this node")
        copy = disk.with_name(f".{disk.stem}.snapshot.qcow2")
        started = time.monotonic()
        try:
            options = ["-O", "qcow2"]
            base_blob, backing = "", ""
            if thin:
                backing, fmt = await self._blob_backing(disk, index)
                base_blob = Path(backing).name.removeprefix("blob-")
                options += ["-B", backing, "-F", fmt]
            progress(f"copying disk {index}")
            await _qemu_img("convert", "-q", "-U", *options, str(path), str(copy))
            if thin:
                # the cache path of this node becomes a name any node's cache resolves
                await _qemu_img(
                    "rebase", "-q", "-u", "-b", Path(backing).name, "-F", fmt, str(copy)
                )
            size = (await asyncio.to_thread(copy.stat)).st_size
            progress(f"uploading disk {index} ({size // (1024 * 1024)} MiB)")
            try:
                blob = await sink.upload(_file_chunks(copy))
            except DiskError:
                raise
            except Exception as exc:
                raise DiskError(f"cannot upload disk {index}: {exc}", retryable=True) from exc
        finally:
            copy.unlink(missing_ok=True)
        log.info(
            "disk snapshot copied",
            path=str(path),
            blob=blob,
            bytes=size,
            thin=thin,
            seconds=round(time.monotonic() - started, 2),
        )
        return SnapshotCopy(blob, size, base_blob)

    async def _blob_backing(self, disk: Path, index: int) -> tuple[str, str]:
        """The disk's backing file and its format, if it is a cached blob (thin snapshots)."""
        output = await _qemu_img("info", "-U", "--output=json", str(disk))
        try:
            data = json.loads(output)
        except ValueError as exc:
            raise DiskError(f"cannot read qemu-img info of disk {index}: {exc}") from exc
        backing = str(data.get("full-backing-filename") or data.get("backing-filename") or "")
        if not _BLOB_FILE.match(Path(backing).name):
            raise DiskError(
                f"disk {index} was not made from a blob, so it cannot have a thin snapshot"
            )
        return backing, str(data.get("backing-filename-format") or "qcow2")

    def resolve_url(self, base: str) -> str | None:
        """The URL to fetch for ``base``, or None when it is not a URL or shorthand."""
        if base.startswith(("http://", "https://")):
            return base
        match = _SHORTHAND.match(base)
        if match is None:
            return None
        name, version = match["name"], match["version"]
        try:
            return self.url_template.format(
                name=name, version=version, codename=DEBIAN_CODENAMES.get(version, version)
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise DiskError(
                f"image URL template {self.url_template!r} cannot resolve {base!r}: {exc}"
            ) from exc

    async def _prepare_one(
        self, folder: Path, index: int, spec: DiskRequest, progress: ProgressCallback
    ) -> PreparedDisk:
        if spec.type not in ("disk", "cdrom"):
            raise DiskError(f"disk {index} has unknown type {spec.type!r}")
        if spec.size_gb < 0:
            raise DiskError(f"disk {index} has a negative size ({spec.size_gb} GB)")
        if spec.type == "cdrom":
            if not spec.base:
                raise DiskError(f"disk {index} is a cdrom without an image")
            base = await self._base_file(spec.base, progress)
            info = await self._checked_info(base, spec.base)
            return PreparedDisk(path=base, bus=spec.bus, device="cdrom", format=info.format)

        path = folder / f"disk{index}.qcow2"
        disk = PreparedDisk(path=path, bus=spec.bus, device="disk", format="qcow2")
        if path.exists():
            log.info("disk reused", path=str(path))
            return disk
        if not spec.base:
            if spec.size_gb == 0:
                raise DiskError(f"disk {index} is blank and has no size")
            await self._create(path, ["-f", "qcow2"], f"{spec.size_gb}G")
            return disk
        base = await self._base_file(spec.base, progress)
        info = await self._checked_info(base, spec.base)
        wanted = spec.size_gb * GIB
        # Never shrink below the base; size 0 means "as big as the base".
        size = f"{spec.size_gb}G" if wanted > info.virtual_size else None
        await self._create(
            path, ["-f", "qcow2", "-b", str(base.resolve()), "-F", info.format], size
        )
        return disk

    async def _blob_file(self, ref: str, progress: ProgressCallback, depth: int = 0) -> Path:
        """A blob base, downloaded once from the control plane into the cache.

        A blob that is a thin snapshot (a qcow2 whose backing file is named
        ``blob-<UUID>``) has its base blob fetched beside it, and so on down
        its chain (at most ``MAX_BLOB_CHAIN`` deep); any other backing file
        is refused.
        """
        uuid = ref.removeprefix(BLOB_PREFIX)
        if self.blobs is None or not uuid or "/" in uuid:
            raise DiskError(f"base image {ref!r} cannot be fetched by this node")
        target = self.cache_dir / f"blob-{uuid}"
        lock = self._fetch_locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            if not target.exists():
                await asyncio.to_thread(_make_folder, self.cache_dir)
                try:
                    await _download_blob(self.blobs, uuid, target, progress)
                except DiskError:
                    raise
                except Exception as exc:
                    raise DiskError(f"cannot fetch base image {ref!r}: {exc}") from exc
                log.info("blob fetched", ref=ref, path=str(target))
        backing = await self._blob_backing_name(target, ref)
        if backing:
            if depth >= MAX_BLOB_CHAIN:
                raise DiskError(f"base image {ref!r} has a chain of more than {MAX_BLOB_CHAIN}")
            await self._blob_file(BLOB_PREFIX + backing.removeprefix("blob-"), progress, depth + 1)
        return target

    async def _blob_backing_name(self, path: Path, ref: str) -> str:
        """The blob a cached blob is a thin overlay on (its backing file's name), or ""."""
        data = await self._info(path, ref)
        backing = str(data.get("backing-filename") or "")
        if backing and not _BLOB_FILE.match(backing):
            raise DiskError(f"base image {ref!r} has a backing file; refusing to use it")
        return backing

    async def _info(self, path: Path, ref: str) -> dict[str, object]:
        output = await _qemu_img("info", "--output=json", str(path))
        try:
            data = json.loads(output)
        except ValueError as exc:
            raise DiskError(f"cannot read qemu-img info for base image {ref!r}: {exc}") from exc
        if not isinstance(data, dict):
            raise DiskError(f"cannot read qemu-img info for base image {ref!r}")
        return data

    async def _create(self, path: Path, options: list[str], size: str | None) -> None:
        """Run ``qemu-img create`` into a temporary name, then rename it into place."""
        temporary = path.with_name(f".{path.name}.partial")
        args = ["create", "-q", *options, str(temporary)]
        if size is not None:
            args.append(size)
        try:
            await _qemu_img(*args)
            await asyncio.to_thread(os.replace, temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        log.info("disk created", path=str(path), size=size, options=options)

    async def _checked_info(self, path: Path, ref: str) -> ImageInfo:
        output = await _qemu_img("info", "--output=json", str(path))
        try:
            data = json.loads(output)
            backing = data.get("backing-filename")
            # Only a cached blob may have a backing file: the blob it is a thin overlay
            # on, fetched beside it (see _blob_file); nothing else on the host.
            thin = (
                ref.startswith(BLOB_PREFIX)
                and isinstance(backing, str)
                and _BLOB_FILE.match(backing) is not None
                and (path.parent / backing).is_file()
            )
            if backing and not thin:
                raise DiskError(f"base image {ref!r} has a backing file; refusing to use it")
            return ImageInfo(format=str(data["format"]), virtual_size=int(data["virtual-size"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DiskError(f"cannot read qemu-img info for base image {ref!r}: {exc}") from exc

    async def _base_file(self, ref: str, progress: ProgressCallback) -> Path:
        """The local file for a base reference, fetching it into the cache if needed."""
        if ref.startswith(BLOB_PREFIX):
            return await self._blob_file(ref, progress)
        url = self.resolve_url(ref)
        if url is None:
            path = Path(ref)
            if path.is_absolute() and path.is_file():
                return path
            raise DiskError(f"base image {ref!r} does not exist")
        key = hashlib.sha256(url.encode()).hexdigest()
        target = self.cache_dir / key
        lock = self._fetch_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if target.exists():
                return target
            loop = asyncio.get_running_loop()

            def report(message: str) -> None:
                loop.call_soon_threadsafe(progress, message)

            started = time.monotonic()
            await asyncio.to_thread(_make_folder, self.cache_dir)
            await asyncio.to_thread(_fetch, url, ref, target, report)
            log.info(
                "image fetched",
                ref=ref,
                url=url,
                path=str(target),
                seconds=round(time.monotonic() - started, 2),
            )
            return target


def _make_folder(folder: Path) -> None:
    # QEMU runs as an unprivileged user and must be able to enter the folder.
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)


async def _qemu_img(*args: str) -> str:
    """Run qemu-img; DiskError with its stderr when it fails."""
    try:
        process = await asyncio.create_subprocess_exec(
            "qemu-img",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise DiskError(f"cannot run qemu-img: {exc}") from exc
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip()
        raise DiskError(f"qemu-img {args[0]} failed: {detail}")
    return stdout.decode(errors="replace")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read in a thread."""
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, _CHUNK):
            yield chunk


def _fetch(url: str, ref: str, target: Path, report: Callable[[str], None]) -> None:
    """Download ``url`` to ``target`` atomically, reporting progress (runs in a thread)."""
    request = urllib.request.Request(url, headers={"User-Agent": "minicloud-nodeagent"})
    descriptor, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    temporary = Path(temporary_name)
    try:
        with (
            os.fdopen(descriptor, "wb") as out,
            urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            last_percent = -_PROGRESS_STEP_PERCENT
            last_time = 0.0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                percent = done * 100 // total if total else 0
                now = time.monotonic()
                if (
                    percent - last_percent >= _PROGRESS_STEP_PERCENT
                    or now - last_time >= _PROGRESS_INTERVAL_S
                ):
                    report(_progress_message(ref, done, total))
                    last_percent, last_time = percent, now
            if total and done != total:
                raise DiskError(
                    f"fetching {url} stopped after {done} of {total} bytes", retryable=True
                )
            if last_percent < 100:
                report(_progress_message(ref, done, total or done))
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except urllib.error.HTTPError as exc:
        exc.close()  # the error holds the response, and so the connection, open
        raise DiskError(
            f"cannot fetch base image {ref!r} from {url}: HTTP {exc.code} {exc.reason}",
            retryable=exc.code >= 500 or exc.code in (408, 429),
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DiskError(
            f"cannot fetch base image {ref!r} from {url}: {reason}", retryable=True
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _progress_message(ref: str, done: int, total: int) -> str:
    if total:
        return f"Fetching required image {ref}, {done * 100 // total}% complete"
    return f"Fetching required image {ref}, {done // (1024 * 1024)} MiB fetched"


BLOB_PREFIX = "sf://blob/"


async def _download_blob(
    source: BlobSource, uuid: str, target: Path, progress: ProgressCallback
) -> None:
    """Write a blob into target through a temporary file, reporting progress."""
    temporary = target.with_name(f".{target.name}.partial")
    done, reported = 0, 0
    try:
        with temporary.open("wb") as out:
            async for chunk in source.download(uuid):
                await asyncio.to_thread(out.write, chunk)
                done += len(chunk)
                if done - reported >= 64 * 1024 * 1024:
                    reported = done
                    progress(f"Fetching required blob {uuid}, {done // (1024 * 1024)} MiB")
        await asyncio.to_thread(os.replace, temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
