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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nodeagent.hypervisor.protocol import PreparedDisk
from nodeagent.spec import DiskSpec

ProgressCallback = Callable[[str], None]


class DiskError(Exception):
    """A disk could not be prepared; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DiskBuilder(Protocol):
    """Builds and removes an instance's disk files."""

    async def prepare(
        self, instance_uuid: str, disks: tuple[DiskSpec, ...], progress: ProgressCallback
    ) -> list[PreparedDisk]:
        """Make the instance's disk files, fetching bases as needed."""
        ...

    async def remove(self, instance_uuid: str) -> None:
        """Delete the instance's disk files."""
        ...
