"""The disk-builder port: turn an instance's disk specs into files to attach.

Semantics every implementation honours:

- ``prepare`` returns one ``PreparedDisk`` per spec, in order, under the
  instance's folder; calling it again for the same instance reuses what is
  there (idempotent).
- A base that cannot be found or fetched raises ``DiskError`` naming it;
  ``retryable`` is true only for failures that may pass (a network error).
- Long work reports progress through the ``progress`` callback with a
  human-readable message (e.g. "Fetching required image debian:11, 30% complete").
- ``remove`` deletes everything ``prepare`` made for the instance; removing
  twice is a no-op. Cached base images are kept.
- ``config_drive`` (re)builds the instance's config drive from the spec every
  time it is called (fresh content, e.g. a new random seed) and returns it as
  a read-only raw virtio disk in the instance's folder, or None when the spec
  asks for none (``configdrive: none``). An unknown ``configdrive`` kind or
  user data that is not base64 raises ``DiskError`` (not retryable).
- ``firmware_template`` gives a local file for an NVRAM template reference (an
  absolute path to a file in one of ``FIRMWARE_DIRS``, or ``sf://blob/UUID``
  fetched once into the cache); any other reference raises ``DiskError``.
- ``export`` flattens each ``disk`` of a prepared instance into one standalone
  image (qcow2, no backing file: the overlay merged with its base) and
  uploads it through the sink, returning one blob UUID per spec, in order
  ("" for a cdrom, which is not copied). An instance whose disk files are
  missing raises ``DiskError``. The instance's own files are left as they
  were; temporary files are removed whatever happens. The caller makes sure
  the guest is not running (a running guest's disk would be copied torn).
- ``snapshot`` copies one ``disk`` (by its index) into a blob: from
  ``source`` (a stable file: the original under a running guest's snapshot
  overlay) or, when None, from the disk's own file (a stopped guest). It is
  a standalone qcow2, or with ``thin`` an overlay whose backing file is the
  disk's base blob (named ``blob-<UUID>``, as nodes cache blobs; a disk not
  made from a blob cannot be thin: ``DiskError``). It returns a
  ``SnapshotCopy``; temporary files are removed whatever happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.nodewire.domain import DiskRequest, DomainRequest
from nodeagent.errors import NodeAgentError
from nodeagent.hypervisor.protocol import PreparedDisk

ProgressCallback = Callable[[str], None]

# Node folders whose files an instance may name as its NVRAM template (a guest
# reads its NVRAM, so any other host file could leak into it).
FIRMWARE_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/ovmf"))


class DiskError(NodeAgentError):
    """A disk could not be prepared; ``retryable`` says whether to try again."""


class BlobSink(Protocol):
    """Where exported disks go (the control plane's BlobService)."""

    async def upload(self, chunks: AsyncIterator[bytes]) -> str:
        """Store the bytes as a blob; its UUID."""
        ...


@dataclass(frozen=True)
class SnapshotCopy:
    """A disk copied into a blob: the blob, its size, and a thin copy's base blob ("")."""

    blob_uuid: str
    size: int
    base_blob: str = ""


class DiskBuilder(Protocol):
    """Builds and removes an instance's disk files."""

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskRequest, ...], progress: ProgressCallback
    ) -> list[PreparedDisk]:
        """Make the instance's disk files, fetching bases as needed."""
        ...

    async def remove(self, instance_uuid: str) -> None:
        """Delete the instance's disk files."""
        ...

    async def config_drive(self, spec: DomainRequest) -> PreparedDisk | None:
        """Build (or rebuild) the instance's config drive; None when it asks for none."""
        ...

    async def firmware_template(self, ref: str, progress: ProgressCallback) -> Path:
        """A local file with the NVRAM template ``ref`` refers to."""
        ...

    async def export(
        self,
        instance_uuid: str,
        disks: tuple[DiskRequest, ...],
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> tuple[str, ...]:
        """Upload each disk flattened; one blob UUID per spec ("" for a cdrom)."""
        ...

    async def snapshot(
        self,
        instance_uuid: str,
        index: int,
        source: Path | None,
        thin: bool,
        sink: BlobSink,
        progress: ProgressCallback,
    ) -> SnapshotCopy:
        """Copy one disk into a blob, standalone or (thin) an overlay on its base blob."""
        ...


def local_firmware(ref: str, folders: tuple[Path, ...] = FIRMWARE_DIRS) -> Path:
    """A node path to an NVRAM template, checked to be a file in one of ``folders``."""
    path = Path(ref)
    if not path.is_absolute():
        raise DiskError(f"NVRAM template {ref!r} is neither a node path nor sf://blob/UUID")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(folder) for folder in folders):
        names = ", ".join(str(f) for f in folders)
        raise DiskError(f"NVRAM template {ref!r} is not in a firmware folder ({names})")
    if not resolved.is_file():
        raise DiskError(f"NVRAM template {ref!r} does not exist")
    return resolved
