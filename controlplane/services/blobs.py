"""What keeps a blob alive, freeing blobs nothing uses, blob listing and events.

A blob is kept while either holds:

* its ``reference_count`` is above zero: one per artifact version naming it
  (two versions of the same content count twice) and one per agent ``put``
  of it (those are never given back, so such blobs stay);
* a live instance (any state but ``deleted``) uses it as a disk base or
  NVRAM template (``sf://blob/UUID`` in its stored spec, which is what
  ``label:`` and ``sf://upload/`` bases resolve to at create).

Releasing a reference (a version dropped or deleted, an artifact deleted)
frees the blob at once when neither holds any more: its record goes to state
``deleted`` (still readable by UUID), its hash index and its bytes are
removed, so the same content uploaded again makes a new blob. A blob still
used by an instance is remembered (``blobfree/``) and freed by the sweep,
which runs every ``blob_sweep_interval`` seconds, once that instance is
deleted. Blobs nobody ever referenced (a bare upload, agent output,
screenshots) are not freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from controlplane.errors import NotFound
from controlplane.model import Blob, Event, Instance
from controlplane.services.events import read_events
from controlplane.services.namespaces import SYSTEM, can_see
from controlplane.store.artifacts import Artifacts
from controlplane.store.blobs import DELETED, BlobStore
from controlplane.store.protocol import Op
from controlplane.store.records import DELETED as INSTANCE_DELETED
from controlplane.store.records import Records
from controlplane.validation import looks_like_uuid

log = structlog.get_logger(__name__)

EventMaker = Callable[..., Event]


def blobs_used_by(instance: Instance) -> set[str]:
    """The blobs an instance's stored spec uses as bases (disks and NVRAM template)."""
    refs = [d.base for d in instance.spec.disks] + [instance.spec.nvram_template]
    return {r.removeprefix("sf://blob/") for r in refs if r.startswith("sf://blob/")}


class BlobService:
    """Blob lifetimes, listing and events."""

    def __init__(
        self,
        blobs: BlobStore,
        records: Records,
        artifacts: Artifacts,
        event: EventMaker,
        sweep_interval: float = 60.0,
    ) -> None:
        self.blobs = blobs
        self.records = records
        self.artifacts = artifacts
        self.event = event
        self.sweep_interval = sweep_interval

    def _events(
        self, message: str, kind: str = "mutate", **extra: Any
    ) -> Callable[[Blob], Sequence[Op]]:
        def ops(blob: Blob) -> Sequence[Op]:
            details = {"reference_count": blob.reference_count, **extra}
            return self.records.event_ops([self.event(blob.uuid, message, kind, **details)])

        return ops

    async def add(self, chunks: Any, now: float) -> Blob:
        """Store streamed bytes as a blob (recording its creation), or the known one."""
        return await self.blobs.add(chunks, now, self._events("blob created"))

    async def reference(self, uuid: str, why: str) -> Blob:
        """Count one more user of a live blob (NOT_FOUND if it is missing or freed).

        ``why`` goes into the blob's event, which any namespace knowing the
        blob's UUID may read: it must not name another namespace's objects.
        """
        blob = await self.blobs.reference(uuid, 1, self._events("reference added", reason=why))
        if blob is None:
            raise NotFound(f"blob {uuid!r} not found")
        return blob

    async def release(self, uuid: str, why: str) -> None:
        """Give back one reference; free the blob if nothing keeps it any more."""
        blob = await self.blobs.reference(uuid, -1, self._events("reference removed", reason=why))
        if blob is None or blob.reference_count > 0:
            return
        users = await self.instances_using(uuid)
        if users:
            await self.blobs.mark_pending(uuid)
            log.info("blob unreferenced but in use; kept", blob=uuid, instances=len(users))
            return
        await self._free(uuid)

    async def _free(self, uuid: str) -> None:
        freed = await self.blobs.free(uuid, self._events("blob freed: nothing uses it"))
        if freed is not None:
            log.info("blob freed", blob=uuid, size=freed.size)

    async def sweep_once(self) -> int:
        """Free released blobs no live instance uses any more; returns how many."""
        pending = await self.blobs.pending()
        if not pending:
            return 0
        used = await self._all_used()
        count = 0
        for uuid in pending:
            if uuid not in used:
                await self._free(uuid)
                count += 1
        return count

    async def run(self) -> None:
        """Sweep now and then every interval, until cancelled."""
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("blob sweep failed; trying again next interval")
            await asyncio.sleep(self.sweep_interval)

    async def _all_used(self) -> dict[str, list[Instance]]:
        used: dict[str, list[Instance]] = {}
        for inst in await self.records.list_instances():
            if inst.state != INSTANCE_DELETED:
                for uuid in blobs_used_by(inst):
                    used.setdefault(uuid, []).append(inst)
        return used

    async def instances_using(self, uuid: str) -> list[Instance]:
        """The live instances using a blob as a base."""
        return (await self._all_used()).get(uuid, [])

    async def get(self, uuid: str) -> Blob:
        """A blob by UUID (freed ones too); NOT_FOUND when there is none."""
        blob = await self.blobs.get(uuid) if looks_like_uuid(uuid) else None
        if blob is None:
            raise NotFound(f"blob {uuid!r} not found")
        return blob

    async def get_live(self, uuid: str) -> Blob:
        """A blob that has not been freed; NOT_FOUND otherwise."""
        blob = await self.get(uuid)
        if blob.state == DELETED:
            raise NotFound(f"blob {uuid!r} not found (it was freed)")
        return blob

    async def users(self, namespace: str, uuid: str) -> list[str]:
        """UUIDs of the live instances visible to the namespace using the blob."""
        return sorted(
            i.uuid for i in await self.instances_using(uuid) if can_see(namespace, i.namespace)
        )

    async def list_for(self, namespace: str) -> list[tuple[Blob, list[str]]]:
        """Live blobs with the instances using them: all for system, else the namespace's.

        A namespace's blobs are those its artifacts' versions reference and
        those its live instances use.
        """
        used = await self._all_used()
        if namespace == SYSTEM:
            wanted = None
        else:
            wanted = {
                str(v["blob_uuid"])
                for art in await self.artifacts.list_all(namespace)
                for v in art.versions
            }
            wanted |= {
                uuid for uuid, insts in used.items() if any(i.namespace == namespace for i in insts)
            }
        found = []
        for blob in await self.blobs.list_all():
            if blob.state == DELETED or (wanted is not None and blob.uuid not in wanted):
                continue
            users = sorted(
                i.uuid for i in used.get(blob.uuid, []) if can_see(namespace, i.namespace)
            )
            found.append((blob, users))
        return sorted(found, key=lambda pair: pair[0].created_at)

    async def events(self, uuid: str, event_type: str = "", limit: int = 100) -> list[Event]:
        """A blob's events, newest first (any namespace knowing the UUID may read them)."""
        blob = await self.get(uuid)
        return await read_events(self.records, blob.uuid, event_type, limit)
