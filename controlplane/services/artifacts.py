"""Artifacts, and turning a disk base that names one into the blob a node can fetch.

Bases understood here: ``label:NAME`` (the newest version of the label NAME),
``sf://upload/NAMESPACE/NAME`` (the newest version of that upload; only the
caller's own namespace, or any for ``system``) and ``sf://blob/UUID`` (checked
to exist); other ``sf://`` refs are refused, and anything else (a URL, a
path, a distribution shorthand) is left for the node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from controlplane.errors import InvalidArgument, NotFound
from controlplane.model import Artifact
from controlplane.services.namespaces import can_see
from controlplane.store.artifacts import Artifacts
from controlplane.store.blobs import BlobStore
from controlplane.validation import NAME_RE, looks_like_uuid

KINDS = ("upload", "label")


class ArtifactService:
    """Create, find and resolve artifacts."""

    def __init__(self, artifacts: Artifacts, blobs: BlobStore, clock: Callable[[], float]) -> None:
        self.artifacts = artifacts
        self.blobs = blobs
        self.clock = clock

    async def upload(self, namespace: str, name: str, chunks: AsyncIterator[bytes]) -> Artifact:
        """Store bytes as a blob and make it the newest version of the upload NAME."""
        _check_name(name)
        blob = await self.blobs.add(chunks, self.clock())
        return await self.from_blob(namespace, name, blob.uuid, "upload")

    async def from_blob(
        self, namespace: str, name: str, blob_uuid: str, kind: str = "upload", source_url: str = ""
    ) -> Artifact:
        """Make an existing blob the newest version of an artifact."""
        _check_name(name)
        kind = kind or "upload"
        if kind not in KINDS:
            raise InvalidArgument(f"artifact type {kind!r} is not one of: {', '.join(KINDS)}")
        if await self.blobs.get(blob_uuid) is None:
            raise NotFound(f"blob {blob_uuid!r} not found")
        await self.blobs.reference(blob_uuid)
        return await self.artifacts.add_version(
            namespace, kind, name, blob_uuid, self.clock(), source_url
        )

    async def get(self, namespace: str, ref: str) -> Artifact:
        """By UUID, or "TYPE:NAME" in the namespace."""
        found = None
        if looks_like_uuid(ref):
            found = await self.artifacts.get(ref)
        elif ":" in ref:
            kind, _, name = ref.partition(":")
            found = await self.artifacts.find(namespace, kind, name)
        if found is None or not can_see(namespace, found.namespace):
            raise NotFound(f"artifact {ref!r} not found")
        return found

    async def list_all(self, namespace: str) -> list[Artifact]:
        """The namespace's artifacts."""
        return await self.artifacts.list_all(namespace)

    async def resolve_base(self, namespace: str, base: str) -> str:
        """A disk base with artifact references replaced by ``sf://blob/UUID``."""
        if base.startswith("label:"):
            art = await self.artifacts.find(namespace, "label", base.removeprefix("label:"))
            return await self._blob_ref(art, base)
        if base.startswith("sf://upload/"):
            owner, _, name = base.removeprefix("sf://upload/").partition("/")
            if not can_see(namespace, owner):
                raise NotFound(f"disk base {base!r} not found")
            return await self._blob_ref(await self.artifacts.find(owner, "upload", name), base)
        if base.startswith("sf://blob/"):
            if await self.blobs.get(base.removeprefix("sf://blob/")) is None:
                raise NotFound(f"disk base {base!r}: no such blob")
            return base
        if base.startswith("sf://"):
            raise InvalidArgument(f"disk base {base!r} is not a kind of sf:// reference known here")
        return base

    async def _blob_ref(self, art: Artifact | None, base: str) -> str:
        if art is None or not art.blob_uuid:
            raise NotFound(f"disk base {base!r} not found")
        return f"sf://blob/{art.blob_uuid}"


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"artifact name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
