"""Artifact records: named, versioned references to blobs, per namespace.

Key layout:

    art/<uuid>                          artifact record (JSON)
    artname/<namespace>/<type>/<name>   -> uuid (live artifacts only)

Every write is a compare-and-set on the record's version, retried on
conflict, and commits the events that describe it in the same batch. A write
returns the versions it removed, so the caller can release their blobs.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from collections.abc import Callable, Sequence

from controlplane.model import Artifact, JsonDict, decode_artifact, encode
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Conflict, Delete, Op, Put, Store

DELETED = "deleted"
# (artifact before, or None when new; artifact after; versions removed) -> event puts.
EventOps = Callable[[Artifact | None, Artifact, list[JsonDict]], Sequence[Op]]
# The current artifact -> the new one and the versions it no longer holds.
Edit = Callable[[Artifact], tuple[Artifact, list[JsonDict]]]


def _name_key(art: Artifact) -> bytes:
    return f"artname/{art.namespace}/{art.type}/{art.name}".encode()


def keep_newest(
    versions: Sequence[JsonDict], keep: int
) -> tuple[tuple[JsonDict, ...], list[JsonDict]]:
    """The newest ``keep`` versions, and the older ones dropped."""
    cut = max(0, len(versions) - keep)
    return tuple(versions[cut:]), list(versions[:cut])


def with_version(
    old: Artifact, blob_uuid: str, now: float, keep: int, source_url: str = ""
) -> tuple[Artifact, list[JsonDict]]:
    """The artifact with a new newest version (index one more than any given), and the
    oldest versions beyond ``keep`` it drops."""
    number = old.last_index + 1
    version = {"index": number, "blob_uuid": blob_uuid, "created_at": now}
    kept, dropped = keep_newest((*old.versions, version), keep)
    new = dataclasses.replace(
        old, versions=kept, index=number, source_url=source_url or old.source_url
    )
    return new, dropped


class Artifacts:
    """Reads and writes artifacts."""

    def __init__(self, store: Store, default_max_versions: int = 3) -> None:
        self.store = store
        self.default_max_versions = default_max_versions

    def max_versions(self, art: Artifact) -> int:
        """How many versions the artifact keeps."""
        return art.max_versions or self.default_max_versions

    async def get(self, uuid: str) -> Artifact | None:
        """An artifact by UUID (deleted ones too), or None."""
        item = await self.store.get(f"art/{uuid}".encode())
        return None if item is None else decode_artifact(item.value)

    async def find(self, namespace: str, kind: str, name: str) -> Artifact | None:
        """The live artifact of that type and name in the namespace, or None."""
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
        events: EventOps = lambda old, new, dropped: (),
    ) -> tuple[Artifact, list[JsonDict]]:
        """Make a blob the newest version of an artifact, creating the artifact if needed.

        The new version's index is one more than the highest ever given; the
        oldest versions beyond the artifact's maximum are dropped and returned.
        """
        name_key = f"artname/{namespace}/{kind}/{name}".encode()

        async def attempt() -> tuple[Artifact, list[JsonDict]]:
            index = await self.store.get(name_key)
            if index is None:
                art = Artifact(
                    uuid=str(uuidlib.uuid4()),
                    namespace=namespace,
                    type=kind,
                    name=name,
                    versions=({"index": 1, "blob_uuid": blob_uuid, "created_at": now},),
                    source_url=source_url,
                    index=1,
                )
                ops = [
                    Put(name_key, art.uuid.encode(), expect=0),
                    Put(f"art/{art.uuid}".encode(), encode(art), expect=0),
                    *events(None, art, []),
                ]
                await self.store.commit(ops)
                return art, []
            item = await self.store.get(f"art/{index.value.decode()}".encode())
            if item is None:
                raise Conflict(f"artifact {kind}:{name} is being replaced")
            old = decode_artifact(item.value)
            if old.state == DELETED:
                # Deleted since its name was read: the name is free now, so start again.
                raise Conflict(f"artifact {kind}:{name} was deleted")
            art, dropped = with_version(old, blob_uuid, now, self.max_versions(old), source_url)
            ops = [Put(item.key, encode(art), expect=item.version), *events(old, art, dropped)]
            await self.store.commit(ops)
            return art, dropped

        return await retry_on_conflict(attempt, f"artifact {kind}:{name}")

    async def claim(
        self,
        fresh: Artifact,
        edit: Callable[[Artifact], Artifact | None],
        events: EventOps = lambda old, new, dropped: (),
    ) -> tuple[Artifact, bool]:
        """The live artifact of fresh's namespace, type and name changed by edit, or fresh
        itself stored when there is none; and whether anything was written.

        edit answers None to leave an existing artifact as it is.
        """
        name_key = _name_key(fresh)

        async def attempt() -> tuple[Artifact, bool]:
            index = await self.store.get(name_key)
            if index is None:
                ops = [
                    Put(name_key, fresh.uuid.encode(), expect=0),
                    Put(f"art/{fresh.uuid}".encode(), encode(fresh), expect=0),
                    *events(None, fresh, []),
                ]
                await self.store.commit(ops)
                return fresh, True
            item = await self.store.get(f"art/{index.value.decode()}".encode())
            if item is None:
                raise Conflict(f"artifact {fresh.type}:{fresh.name} is being replaced")
            old = decode_artifact(item.value)
            if old.state == DELETED:
                raise Conflict(f"artifact {fresh.type}:{fresh.name} was deleted")
            new = edit(old)
            if new is None or new == old:
                return old, False
            await self.store.commit(
                [Put(item.key, encode(new), expect=item.version), *events(old, new, [])]
            )
            return new, True

        return await retry_on_conflict(attempt, f"artifact {fresh.type}:{fresh.name}")

    async def change(
        self, uuid: str, edit: Edit, events: EventOps = lambda old, new, dropped: ()
    ) -> tuple[Artifact, list[JsonDict]] | None:
        """Replace an artifact with edit(current); None when there is no such artifact.

        An edit that deletes the artifact (state ``deleted``) frees its name.
        An edit that changes nothing writes nothing.
        """

        async def attempt() -> tuple[Artifact, list[JsonDict]] | None:
            item = await self.store.get(f"art/{uuid}".encode())
            if item is None:
                return None
            old = decode_artifact(item.value)
            new, removed = edit(old)
            if new == old:
                return new, []
            ops: list[Op] = [Put(item.key, encode(new), expect=item.version)]
            if new.state == DELETED and old.state != DELETED:
                ops.append(Delete(_name_key(old)))
            ops += events(old, new, removed)
            await self.store.commit(ops)
            return new, removed

        return await retry_on_conflict(attempt, f"artifact {uuid}")

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
        """The namespace's live artifacts."""
        found = []
        for item in await self.store.scan(f"artname/{namespace}/".encode()):
            art = await self.get(item.value.decode())
            if art is not None:
                found.append(art)
        return found

    async def list_everywhere(self) -> list[Artifact]:
        """Every live artifact of every namespace."""
        found = []
        for item in await self.store.scan(b"artname/"):
            art = await self.get(item.value.decode())
            if art is not None:
                found.append(art)
        return found
