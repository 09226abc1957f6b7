"""Artifact records: named, versioned references to blobs, per namespace.

Key layout:

    art/<uuid>                          artifact record (JSON)
    artname/<namespace>/<type>/<name>   -> uuid
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from collections.abc import Callable, Sequence

from controlplane.model import Artifact, JsonDict, decode_artifact, encode
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Conflict, Op, Put, Store


class Artifacts:
    """Reads and writes artifacts."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, uuid: str) -> Artifact | None:
        """An artifact by UUID, or None."""
        item = await self.store.get(f"art/{uuid}".encode())
        return None if item is None else decode_artifact(item.value)

    async def find(self, namespace: str, kind: str, name: str) -> Artifact | None:
        """The artifact of that type and name in the namespace, or None."""
        item = await self.store.get(f"artname/{namespace}/{kind}/{name}".encode())
        return None if item is None else await self.get(item.value.decode())

    async def add_version(
        self,
        namespace: str,
        kind: str,
        name: str,
        blob_uuid: str,
        now: float,
        source_url: str = "",
    ) -> Artifact:
        """Make a blob the newest version of an artifact, creating the artifact if needed."""
        name_key = f"artname/{namespace}/{kind}/{name}".encode()

        async def attempt() -> Artifact:
            index = await self.store.get(name_key)
            if index is None:
                art = Artifact(
                    uuid=str(uuidlib.uuid4()),
                    namespace=namespace,
                    type=kind,
                    name=name,
                    versions=({"index": 1, "blob_uuid": blob_uuid, "created_at": now},),
                    source_url=source_url,
                )
                ops = [
                    Put(name_key, art.uuid.encode(), expect=0),
                    Put(f"art/{art.uuid}".encode(), encode(art), expect=0),
                ]
            else:
                item = await self.store.get(f"art/{index.value.decode()}".encode())
                if item is None:
                    raise Conflict(f"artifact {kind}:{name} is being replaced")
                old = decode_artifact(item.value)
                version = {
                    "index": len(old.versions) + 1,
                    "blob_uuid": blob_uuid,
                    "created_at": now,
                }
                art = Artifact(
                    **{
                        **old.__dict__,
                        "versions": (*old.versions, version),
                        "source_url": source_url or old.source_url,
                    }
                )
                ops = [Put(item.key, encode(art), expect=item.version)]
            await self.store.commit(ops)
            return art

        return await retry_on_conflict(attempt, f"artifact {kind}:{name}")

    async def update_metadata(
        self, uuid: str, change: Callable[[JsonDict], JsonDict], extra: Sequence[Op] = ()
    ) -> JsonDict | None:
        """Replace an artifact's metadata with change(old), atomically with extra ops.

        None when there is no such artifact; compare-and-set, retried on conflict.
        """

        async def attempt() -> JsonDict | None:
            item = await self.store.get(f"art/{uuid}".encode())
            if item is None:
                return None
            art = decode_artifact(item.value)
            metadata = change(dict(art.metadata))
            if metadata == art.metadata:
                return metadata
            new = dataclasses.replace(art, metadata=metadata)
            await self.store.commit([Put(item.key, encode(new), item.version), *extra])
            return metadata

        return await retry_on_conflict(attempt, f"artifact {uuid}")

    async def list_all(self, namespace: str) -> list[Artifact]:
        """The namespace's artifacts."""
        found = []
        for item in await self.store.scan(f"artname/{namespace}/".encode()):
            art = await self.get(item.value.decode())
            if art is not None:
                found.append(art)
        return found
