"""Uploads: create, append, truncate, then turn into a blob and an artifact version.

An upload belongs to the namespace that created it; another namespace sees
NOT_FOUND. Appends and truncations to one upload are serialised.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable

from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound
from controlplane.model import Artifact, Upload
from controlplane.services.artifacts import ArtifactService
from controlplane.store.uploads import Uploads
from controlplane.validation import looks_like_uuid

MAX_UPLOAD_BYTES = 1024**4


class UploadService:
    """The upload use cases."""

    def __init__(
        self,
        uploads: Uploads,
        artifacts: ArtifactService,
        node_name: str,
        clock: Callable[[], float],
    ) -> None:
        self.uploads = uploads
        self.artifacts = artifacts
        self.node_name = node_name
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def create(self, namespace: str) -> tuple[Upload, int]:
        """A new, empty upload."""
        upload = Upload(
            uuid=str(uuidlib.uuid4()),
            namespace=namespace,
            node=self.node_name,
            created_at=self.clock(),
        )
        return await self.uploads.create(upload), 0

    async def get(self, namespace: str, uuid: str) -> tuple[Upload, int]:
        """An upload of the namespace, and its size."""
        upload = await self.uploads.get(uuid) if looks_like_uuid(uuid) else None
        if upload is None or upload.namespace != namespace:
            raise NotFound(f"upload {uuid!r} not found")
        return upload, self.uploads.size(uuid)

    async def append(self, namespace: str, uuid: str, data: bytes) -> tuple[Upload, int]:
        """Add bytes to an upload; returns it with its new size."""
        upload, size = await self.get(namespace, uuid)
        async with self._lock(uuid):
            if size + len(data) > MAX_UPLOAD_BYTES:
                raise InvalidArgument(f"an upload may hold at most {MAX_UPLOAD_BYTES} bytes")
            return upload, await self.uploads.append(uuid, data)

    async def truncate(self, namespace: str, uuid: str, size: int) -> tuple[Upload, int]:
        """Cut an upload back to size bytes (not beyond what it holds)."""
        upload, current = await self.get(namespace, uuid)
        if size < 0:
            raise InvalidArgument(f"cannot truncate upload to {size} bytes")
        if size > current:
            # Not a malformed request: the same one is fine once the upload holds more.
            raise FailedPrecondition(f"cannot truncate upload to {size}: it holds {current} bytes")
        async with self._lock(uuid):
            return upload, await self.uploads.truncate(uuid, size)

    async def to_artifact(
        self, namespace: str, uuid: str, name: str, source_url: str = ""
    ) -> Artifact:
        """Store the upload as a blob, make it the newest version of upload NAME, drop it."""
        await self.get(namespace, uuid)
        async with self._lock(uuid):
            blob = await self.artifacts.blobs.add(self.uploads.read(uuid), self.clock())
            art = await self.artifacts.from_blob(
                namespace,
                name,
                blob.uuid,
                "upload",
                source_url or f"sf://upload/{namespace}/{name}",
            )
            await self.uploads.remove(uuid)
        self._locks.pop(uuid, None)
        return art

    def _lock(self, uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(uuid, asyncio.Lock())
