"""Artifacts, their versions, and turning a disk base that names one into a blob.

Bases understood here: ``label:NAME`` (the newest version of the label NAME),
``sf://upload/NAMESPACE/NAME`` (the newest version of that upload; the
caller's own namespace, any for ``system``, or a shared system upload) and
``sf://blob/UUID`` (checked to exist and not be freed),
``sf://snapshot/INSTANCE/DEVICE`` (the newest snapshot of an instance's disk;
see ``controlplane.services.snapshots``); other ``sf://`` refs
are refused, and anything else (a URL, a path, a distribution shorthand) is
left for the node.

An artifact of the system namespace may be shared: every namespace then
sees it (by UUID, by TYPE:NAME when it has none of its own, in its list) and
may use it as a base (``sf://upload/system/NAME``, ``label:NAME``), but only
system changes it (PERMISSION_DENIED for others). A namespace that trusts
another (``NamespaceService.trust``) lets it see and use its artifacts the
same way (``trusted_by`` answers whose artifacts a namespace sees so); only
the owner (and system) changes them.

Each version holds one reference on its blob; a version that goes (deleted,
dropped beyond the artifact's maximum, or with its artifact) gives it back
through the blob service, which frees blobs nothing keeps. Every change is
recorded as an event of the artifact, committed with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Collection, Sequence

from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from controlplane.model import Artifact, Event, JsonDict
from controlplane.services.blobs import BlobService
from controlplane.services.events import read_events
from controlplane.services.namespaces import SYSTEM, can_see
from controlplane.store.artifacts import DELETED, Artifacts, keep_newest
from controlplane.store.protocol import Op
from controlplane.store.records import Records
from controlplane.validation import NAME_RE, looks_like_uuid

KINDS = ("upload", "label")
SNAPSHOT = "snapshot"  # made only by instance snapshots, never by FromBlob
MAX_VERSIONS = 1000
# An artifact being fetched for the first time, and one whose last fetch failed.
INITIAL = "initial"
ERROR = "error"
EventMaker = Callable[..., Event]
# A namespace -> the namespaces that trust it (whose artifacts it sees and may use).
TrustedBy = Callable[[str], Collection[str]]


def no_trust(namespace: str) -> Collection[str]:
    """Nobody trusts anybody."""
    return ()


def visible(namespace: str, art: Artifact, trusted_by: TrustedBy = no_trust) -> bool:
    """Whether the namespace may see the artifact: its own, any for system, a shared
    one, or one of a namespace that trusts it."""
    if can_see(namespace, art.namespace):
        return True
    if art.state == DELETED:
        return False
    return art.shared or art.namespace in trusted_by(namespace)


async def find_visible(
    artifacts: Artifacts, namespace: str, ref: str, trusted_by: TrustedBy = no_trust
) -> Artifact | None:
    """By UUID (deleted ones too), or TYPE:NAME: the namespace's own, else a shared one,
    else one of a namespace trusting it (INVALID_ARGUMENT when several such have it)."""
    found = None
    if looks_like_uuid(ref):
        found = await artifacts.get(ref)
    elif ":" in ref:
        kind, _, name = ref.partition(":")
        found = await artifacts.find(namespace, kind, name)
        if found is None and namespace != SYSTEM:
            found = await artifacts.find(SYSTEM, kind, name)
            if found is not None and not visible(namespace, found, trusted_by):
                found = None
        if found is None and namespace != SYSTEM:
            others = [
                await artifacts.find(o, kind, name)
                for o in sorted(set(trusted_by(namespace)) - {SYSTEM})
            ]
            matches = [a for a in others if a is not None]
            if len(matches) > 1:
                owners = ", ".join(a.namespace for a in matches)
                raise InvalidArgument(
                    f"artifact {ref!r} is in several namespaces trusting {namespace} ({owners}):"
                    " name it by UUID or sf://upload/NAMESPACE/NAME"
                )
            found = matches[0] if matches else None
    return found if found is not None and visible(namespace, found, trusted_by) else None


class ArtifactService:
    """Create, find, version, delete and resolve artifacts."""

    def __init__(
        self,
        artifacts: Artifacts,
        blobs: BlobService,
        records: Records,
        event: EventMaker,
        clock: Callable[[], float],
        trusted_by: TrustedBy = no_trust,
    ) -> None:
        self.artifacts = artifacts
        self.blobs = blobs
        self.records = records
        self.event = event
        self.clock = clock
        self.trusted_by = trusted_by

    async def upload(self, namespace: str, name: str, chunks: AsyncIterator[bytes]) -> Artifact:
        """Store bytes as a blob and make it the newest version of the upload NAME."""
        check_name(name)
        blob = await self.blobs.add(chunks, self.clock())
        return await self.from_blob(namespace, name, blob.uuid, "upload")

    async def from_blob(
        self, namespace: str, name: str, blob_uuid: str, kind: str = "upload", source_url: str = ""
    ) -> Artifact:
        """Make an existing blob the newest version of an artifact."""
        check_name(name)
        kind = kind or "upload"
        if kind not in KINDS:
            raise InvalidArgument(f"artifact type {kind!r} is not one of: {', '.join(KINDS)}")
        await self.blobs.get_live(blob_uuid)
        await self.blobs.reference(blob_uuid, "a new artifact version")
        art, dropped = await self.artifacts.add_version(
            namespace, kind, name, blob_uuid, self.clock(), source_url, self._version_events
        )
        await self.release(dropped)
        return art

    def _version_events(
        self, old: Artifact | None, new: Artifact, dropped: list[JsonDict]
    ) -> Sequence[Op]:
        newest = new.versions[-1]
        events = []
        if old is None:
            events.append(self.event(new.uuid, "artifact created", type=new.type, name=new.name))
        events.append(
            self.event(
                new.uuid,
                f"version {newest['index']} added",
                index=newest["index"],
                blob_uuid=newest["blob_uuid"],
            )
        )
        events += self.dropped_events(new, dropped)
        return self.records.event_ops(events)

    def dropped_events(self, art: Artifact, dropped: list[JsonDict]) -> list[Event]:
        """The events of versions dropped beyond the artifact's maximum."""
        keep = self.artifacts.max_versions(art)
        return [
            self.event(
                art.uuid,
                f"version {v['index']} dropped: more than {keep} versions",
                index=v["index"],
                blob_uuid=v["blob_uuid"],
            )
            for v in dropped
        ]

    async def release(self, removed: list[JsonDict]) -> None:
        """Give back the blob references of versions that went."""
        for version in removed:
            await self.blobs.release(str(version["blob_uuid"]), "an artifact version went")

    async def get(self, namespace: str, ref: str) -> Artifact:
        """By UUID (deleted ones too), or "TYPE:NAME" (own first, then shared)."""
        found = await find_visible(self.artifacts, namespace, ref, self.trusted_by)
        if found is None:
            raise NotFound(f"artifact {ref!r} not found")
        return found

    async def _owned(self, namespace: str, ref: str) -> Artifact:
        """An artifact the namespace may change (a shared or trusted one only by its owner)."""
        art = await self.get(namespace, ref)
        if not can_see(namespace, art.namespace):
            how = "shared by" if art.shared else "trusted to you by"
            raise PermissionDenied(
                f"artifact {ref!r} is {how} {art.namespace}: only {art.namespace} may change it"
            )
        return art

    async def list_all(self, namespace: str) -> list[Artifact]:
        """The namespace's live artifacts, then the shared ones of system, then those of
        the namespaces trusting it (by namespace name)."""
        own = await self.artifacts.list_all(namespace)
        if namespace == SYSTEM:
            return own
        trusters = set(self.trusted_by(namespace)) - {namespace}
        others = [
            a for a in await self.artifacts.list_all(SYSTEM) if a.shared or SYSTEM in trusters
        ]
        for truster in sorted(trusters - {SYSTEM}):
            others += await self.artifacts.list_all(truster)
        return own + others

    def view(self, art: Artifact) -> Artifact:
        """The artifact with its effective maximum of versions filled in."""
        return dataclasses.replace(
            art, max_versions=self.artifacts.max_versions(art), index=art.last_index
        )

    async def _change(
        self,
        art: Artifact,
        edit: Callable[[Artifact], tuple[Artifact, list[JsonDict]]],
        events: Callable[[Artifact, Artifact, list[JsonDict]], list[Event]],
    ) -> Artifact:
        def ops(old: Artifact | None, new: Artifact, removed: list[JsonDict]) -> Sequence[Op]:
            assert old is not None
            return self.records.event_ops(events(old, new, removed))

        changed = await self.artifacts.change(art.uuid, edit, ops)
        if changed is None:
            raise NotFound(f"artifact {art.uuid} not found")
        new, removed = changed
        await self.release(removed)
        return new

    async def delete(self, namespace: str, ref: str) -> Artifact:
        """Delete an artifact and all its versions; a deleted one is left as it is."""
        art = await self._owned(namespace, ref)
        if art.state == DELETED:
            return art

        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            if old.state == DELETED:
                return old, []
            new = dataclasses.replace(old, state=DELETED, versions=(), index=old.last_index)
            return new, list(old.versions)

        def events(old: Artifact, new: Artifact, removed: list[JsonDict]) -> list[Event]:
            return [self.event(old.uuid, "artifact deleted", versions=len(removed))]

        return await self._change(art, edit, events)

    async def delete_all(self, namespace: str, confirm: bool) -> list[Artifact]:
        """Delete every live artifact of the namespace (confirm must be true)."""
        if not confirm:
            raise InvalidArgument("deleting every artifact of a namespace needs confirm")
        own = await self.artifacts.list_all(namespace)
        return [await self.delete(namespace, a.uuid) for a in own]

    async def versions(self, namespace: str, ref: str) -> list[tuple[JsonDict, int]]:
        """The artifact's versions, oldest first, each with its blob's size."""
        art = await self.get(namespace, ref)
        out = []
        for version in art.versions:
            blob = await self.blobs.blobs.get(str(version["blob_uuid"]))
            out.append((version, blob.size if blob is not None else 0))
        return out

    async def delete_version(self, namespace: str, ref: str, index: int) -> Artifact:
        """Delete one version; the artifact goes with its last version."""
        art = await self._owned(namespace, ref)
        if not any(int(v["index"]) == index for v in art.versions):
            raise NotFound(f"artifact {ref!r} has no version {index}")

        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            gone = [v for v in old.versions if int(v["index"]) == index]
            if not gone:
                return old, []
            kept = tuple(v for v in old.versions if int(v["index"]) != index)
            state = old.state if kept else DELETED
            return dataclasses.replace(old, versions=kept, state=state, index=old.last_index), gone

        def events(old: Artifact, new: Artifact, removed: list[JsonDict]) -> list[Event]:
            out = [
                self.event(old.uuid, f"version {v['index']} deleted", blob_uuid=v["blob_uuid"])
                for v in removed
            ]
            if new.state == DELETED and old.state != DELETED:
                out.append(self.event(old.uuid, "artifact deleted: its last version was deleted"))
            return out

        return await self._change(art, edit, events)

    async def set_max_versions(self, namespace: str, ref: str, keep: int) -> Artifact:
        """Keep at most ``keep`` versions from now on, dropping the oldest beyond it now."""
        if not 1 <= keep <= MAX_VERSIONS:
            raise InvalidArgument(f"max_versions must be between 1 and {MAX_VERSIONS}")
        art = await self._owned(namespace, ref)
        if art.state == DELETED:
            raise NotFound(f"artifact {ref!r} not found (it was deleted)")

        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            kept, dropped = keep_newest(old.versions, keep)
            return dataclasses.replace(
                old, versions=kept, max_versions=keep, index=old.last_index
            ), dropped

        def events(old: Artifact, new: Artifact, removed: list[JsonDict]) -> list[Event]:
            out = [self.event(old.uuid, f"max versions set to {keep}", max_versions=keep)]
            return out + self.dropped_events(new, removed)

        return await self._change(art, edit, events)

    async def share(self, namespace: str, ref: str, shared: bool = True) -> Artifact:
        """Share a system artifact with every namespace (or stop sharing it)."""
        art = await self._owned(namespace, ref)
        if art.state == DELETED:
            raise NotFound(f"artifact {ref!r} not found (it was deleted)")
        if art.namespace != SYSTEM:
            raise FailedPrecondition(
                f"only artifacts of the system namespace can be shared, not {art.namespace}'s"
            )

        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            if old.state == DELETED:
                return old, []
            return dataclasses.replace(old, shared=shared, index=old.last_index), []

        def events(old: Artifact, new: Artifact, removed: list[JsonDict]) -> list[Event]:
            return [self.event(old.uuid, "artifact shared" if shared else "artifact unshared")]

        return await self._change(art, edit, events)

    async def events(
        self, namespace: str, ref: str, event_type: str = "", limit: int = 100
    ) -> list[Event]:
        """An artifact's events, newest first."""
        art = await self.get(namespace, ref)
        return await read_events(self.records, art.uuid, event_type, limit)

    async def resolve_base(self, namespace: str, base: str) -> str:
        """A disk base with artifact references replaced by ``sf://blob/UUID``."""
        if base.startswith("label:"):
            art = await find_visible(self.artifacts, namespace, base, self.trusted_by)
            return await self._blob_ref(art, base)
        if base.startswith("sf://upload/"):
            owner, _, name = base.removeprefix("sf://upload/").partition("/")
            art = await self.artifacts.find(owner, "upload", name) if owner and name else None
            if art is not None and not visible(namespace, art, self.trusted_by):
                art = None
            return await self._blob_ref(art, base)
        if base.startswith("sf://blob/"):
            try:
                await self.blobs.get_live(base.removeprefix("sf://blob/"))
            except NotFound as exc:
                raise NotFound(f"disk base {base!r}: no such blob") from exc
            return base
        if base.startswith("sf://snapshot/"):
            return await self.resolve_snapshot(namespace, base)
        if base.startswith("sf://"):
            raise InvalidArgument(f"disk base {base!r} is not a kind of sf:// reference known here")
        return base

    async def _blob_ref(self, art: Artifact | None, base: str) -> str:
        if art is not None and not art.blob_uuid and art.state == INITIAL:
            raise FailedPrecondition(
                f"disk base {base!r} is still being fetched; retry once it is created"
            )
        if art is not None and not art.blob_uuid and art.state == ERROR:
            raise NotFound(f"disk base {base!r} not found: its fetch failed ({art.error})")
        if art is None or not art.blob_uuid:
            raise NotFound(f"disk base {base!r} not found")
        return f"sf://blob/{art.blob_uuid}"

    # -- instance snapshots (controlplane.services.snapshots) -------------------

    async def add_snapshot(
        self, namespace: str, instance_uuid: str, device: str, blob_uuid: str
    ) -> Artifact:
        """Make a disk snapshot's blob the newest version of ``snapshot:<instance>/<device>``."""
        await self.blobs.get_live(blob_uuid)
        await self.blobs.reference(blob_uuid, "a new snapshot version")
        art, dropped = await self.artifacts.add_version(
            namespace,
            SNAPSHOT,
            f"{instance_uuid}/{device}",
            blob_uuid,
            self.clock(),
            f"sf://snapshot/{instance_uuid}/{device}",
            self._version_events,
        )
        await self.release(dropped)
        return art

    async def snapshots_of(self, namespace: str, instance_uuid: str) -> list[Artifact]:
        """The live snapshot artifacts of an instance (one per device snapshotted)."""
        return [
            art
            for art in await self.artifacts.list_all(namespace)
            if art.type == SNAPSHOT
            and art.name.startswith(f"{instance_uuid}/")
            and art.state != DELETED
        ]

    async def resolve_snapshot(self, namespace: str, base: str) -> str:
        """``sf://snapshot/<instance>/<device>`` as the blob of its newest version.

        The caller's own snapshots; system finds any namespace's.
        """
        instance_uuid, _, device = base.removeprefix("sf://snapshot/").partition("/")
        name = f"{instance_uuid}/{device}"
        art = None
        if instance_uuid and device:
            art = await self.artifacts.find(namespace, SNAPSHOT, name)
            if art is None and namespace == SYSTEM:
                art = next(
                    (
                        a
                        for a in await self.artifacts.list_everywhere()
                        if a.type == SNAPSHOT and a.name == name and a.state != DELETED
                    ),
                    None,
                )
        return await self._blob_ref(art, base)


def check_name(name: str) -> None:
    """Refuse a name that is not 1-63 letters, digits, '.', '_' or '-'."""
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"artifact name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
