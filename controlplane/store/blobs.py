"""Blob records (content-addressed by sha512) and their bytes on disk.

Key layout:

    blob/<uuid>            blob record (JSON)
    blobhash/<sha512>      -> uuid of the blob with that content

The bytes live in ``<folder>/<uuid>``. An upload is written to a temporary
file while it is hashed; content already stored returns the existing blob.
File I/O runs in worker threads. Bytes written and read are counted in
``minicloud_blob_bytes_total`` (direction ``in`` and ``out``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import tempfile
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from controlplane.metrics import PlaneMetrics
from controlplane.model import Blob, JsonDict, decode_blob, encode
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Conflict, Op, Put, Store

CHUNK = 1024 * 1024


class BlobStore:
    """Blob records in the store, blob bytes in a folder."""

    def __init__(self, store: Store, folder: Path, metrics: PlaneMetrics | None = None) -> None:
        self.metrics = metrics
        self.store = store
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def get(self, uuid: str) -> Blob | None:
        """A blob by UUID, or None."""
        item = await self.store.get(f"blob/{uuid}".encode())
        return None if item is None else decode_blob(item.value)

    async def find(self, sha512: str) -> Blob | None:
        """The blob with that content hash, or None."""
        item = await self.store.get(f"blobhash/{sha512.lower()}".encode())
        return None if item is None else await self.get(item.value.decode())

    async def add(self, chunks: AsyncIterator[bytes], now: float) -> Blob:
        """Store streamed bytes as a blob (the existing one if the content is known)."""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        digest = hashlib.sha512()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
                    self._moved("in", len(chunk))
            sha = digest.hexdigest()
            existing = await self.find(sha)
            if existing is not None:
                return existing
            blob = Blob(uuid=str(uuidlib.uuid4()), sha512=sha, size=size, created_at=now)
            os.replace(tmp, self.path(blob.uuid))
            try:
                await self.store.commit(
                    [
                        Put(f"blobhash/{sha}".encode(), blob.uuid.encode(), expect=0),
                        Put(f"blob/{blob.uuid}".encode(), encode(blob), expect=0),
                    ]
                )
            except Conflict:
                self.path(blob.uuid).unlink(missing_ok=True)
                again = await self.find(sha)
                if again is None:
                    raise
                return again
            return blob
        finally:
            Path(tmp).unlink(missing_ok=True)

    async def add_bytes(self, data: bytes, now: float) -> Blob:
        """Store bytes already in memory as a blob."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.add(one(), now)

    async def reference(self, uuid: str, delta: int = 1) -> None:
        """Count one more (or fewer) user of a blob."""

        async def attempt() -> None:
            item = await self.store.get(f"blob/{uuid}".encode())
            if item is None:
                return
            blob = decode_blob(item.value)
            count = max(0, blob.reference_count + delta)
            new = Blob(**{**blob.__dict__, "reference_count": count})
            await self.store.commit([Put(item.key, encode(new), expect=item.version)])

        await retry_on_conflict(attempt, f"blob {uuid}")

    async def update_metadata(
        self, uuid: str, change: Callable[[JsonDict], JsonDict], extra: Sequence[Op] = ()
    ) -> JsonDict | None:
        """Replace a blob's metadata with change(old), atomically with extra ops (None: no blob).

        A compare-and-set on the record's version, retried on conflict, so
        concurrent changes are all kept.
        """

        async def attempt() -> JsonDict | None:
            item = await self.store.get(f"blob/{uuid}".encode())
            if item is None:
                return None
            blob = decode_blob(item.value)
            metadata = change(dict(blob.metadata))
            if metadata == blob.metadata:
                return metadata
            new = dataclasses.replace(blob, metadata=metadata)
            await self.store.commit([Put(item.key, encode(new), item.version), *extra])
            return metadata

        return await retry_on_conflict(attempt, f"blob {uuid}")

    def path(self, uuid: str) -> Path:
        """Where a blob's bytes are."""
        return self.folder / uuid

    async def read(self, uuid: str, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """A blob's bytes from offset, at most limit of them (0: all), in chunks."""
        remaining = limit if limit > 0 else None
        with open(self.path(uuid), "rb") as src:
            src.seek(offset)
            while remaining is None or remaining > 0:
                size = CHUNK if remaining is None else min(CHUNK, remaining)
                data = await asyncio.to_thread(src.read, size)
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                self._moved("out", len(data))
                yield data

    def _moved(self, direction: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.blob_bytes.inc(size, direction=direction)
