"""Upload records and their bytes on disk while they are being sent.

Key layout:

    upload/<uuid>       upload record (JSON)

The bytes live in ``<folder>/<uuid>``; the file's size is the upload's size.
File I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from controlplane.model import Upload, decode_upload, encode
from controlplane.store.protocol import Delete, Put, Store

CHUNK = 1024 * 1024


class Uploads:
    """Upload records in the store, upload bytes in a folder."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def create(self, upload: Upload) -> Upload:
        """Record a new, empty upload."""
        await asyncio.to_thread(self.path(upload.uuid).write_bytes, b"")
        await self.store.commit([Put(f"upload/{upload.uuid}".encode(), encode(upload), expect=0)])
        return upload

    async def get(self, uuid: str) -> Upload | None:
        """An upload by UUID, or None."""
        item = await self.store.get(f"upload/{uuid}".encode())
        return None if item is None else decode_upload(item.value)

    def path(self, uuid: str) -> Path:
        """Where an upload's bytes are."""
        return self.folder / uuid

    def size(self, uuid: str) -> int:
        """How many bytes the upload holds."""
        try:
            return self.path(uuid).stat().st_size
        except FileNotFoundError:
            return 0

    async def append(self, uuid: str, data: bytes) -> int:
        """Add bytes at the end; returns the new size."""

        def write() -> int:
            with open(self.path(uuid), "ab") as out:
                out.write(data)
                return out.tell()

        return await asyncio.to_thread(write)

    async def truncate(self, uuid: str, size: int) -> int:
        """Cut the bytes back to size; returns the new size."""
        await asyncio.to_thread(os.truncate, self.path(uuid), size)
        return size

    async def read(self, uuid: str) -> AsyncIterator[bytes]:
        """The upload's bytes, in chunks."""
        with open(self.path(uuid), "rb") as src:
            while data := await asyncio.to_thread(src.read, CHUNK):
                yield data

    async def remove(self, uuid: str) -> None:
        """Forget an upload and its bytes."""
        await self.store.commit([Delete(f"upload/{uuid}".encode())])
        self.path(uuid).unlink(missing_ok=True)
