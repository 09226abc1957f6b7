"""User metadata on objects: get, set one key, delete one key.

Object types plug in through a small registry (``MetadataService.kinds``):
each ``MetadataKind`` knows how to find an object the caller may see, how to
check a whole metadata dict for its reserved keys, and how to replace its
metadata with a compare-and-set (so concurrent sets never lose each other)
in the same batch as the ``mutate`` event that records the change. Instances,
blobs and artifacts are registered here; namespaces, networks, interfaces and
nodes add a kind of their own.

Visibility follows the other services: an object of another namespace looks
exactly like a missing one, except to ``system``, which sees everything.
Blobs belong to no namespace (as in the BlobService) and are visible to all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from controlplane.model import (
    Event,
    Instance,
    Interface,
    JsonDict,
    Network,
    Node,
    encode,
    node_object,
)
from controlplane.services.artifacts import TrustedBy, find_visible, no_trust
from controlplane.services.namespaces import SYSTEM, NamespaceService, can_see, require_system
from controlplane.store import occ
from controlplane.store.artifacts import Artifacts
from controlplane.store.blobs import BlobStore
from controlplane.store.networks import NetworkRecords, iface_key, net_key
from controlplane.store.protocol import Put
from controlplane.store.records import DELETED, Records
from controlplane.validation import (
    check_instance_metadata,
    check_metadata_key,
    check_metadata_size,
    looks_like_uuid,
)

Change = Callable[[JsonDict], JsonDict]


@dataclass(frozen=True)
class Found:
    """An object the caller may see: its UUID, namespace and current metadata."""

    uuid: str
    namespace: str
    metadata: JsonDict


class MetadataKind(Protocol):
    """How one object type keeps its metadata."""

    async def find(self, namespace: str, ref: str) -> Found:
        """The object by ref, if the namespace may see it (else NotFound)."""
        ...

    def check(self, metadata: JsonDict) -> JsonDict:
        """The whole metadata after a change, checked (InvalidArgument if not allowed)."""
        ...

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        """Apply change to the current metadata with compare-and-set, recording event."""
        ...


class InstanceKind:
    """Instance metadata lives in the instance record; ``tags`` and ``affinity`` are checked."""

    def __init__(self, records: Records) -> None:
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        found: Instance | None = None
        if looks_like_uuid(ref):
            found = await self.records.get_instance(ref)
        if found is None:
            found = await self.records.find_by_name(namespace, ref)
        if found is None or not can_see(namespace, found.namespace):
            raise NotFound(f"instance {ref!r} not found")
        return Found(found.uuid, found.namespace, found.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_instance_metadata(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        async def read() -> Instance:
            current = await self.records.get_instance(found.uuid)
            if current is None:
                raise NotFound(f"instance {found.uuid} not found")
            if current.state == DELETED:
                raise FailedPrecondition(f"instance {found.uuid} is deleted")
            return current

        async def write(old: Instance, new: Instance) -> Instance:
            return await self.records.update_instance(old, new, [event])

        def mutate(old: Instance) -> Instance:
            return old.with_changes(metadata=change(dict(old.metadata)))

        stored = await occ.update(read, mutate, write, f"instance {found.uuid}")
        return stored.metadata


class BlobKind:
    """Blob metadata lives in the blob record; blobs are visible to every namespace."""

    def __init__(self, blobs: BlobStore, records: Records) -> None:
        self.blobs = blobs
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        blob = await self.blobs.get(ref) if looks_like_uuid(ref) else None
        if blob is None:
            raise NotFound(f"blob {ref!r} not found")
        return Found(blob.uuid, "", blob.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        result = await self.blobs.update_metadata(
            found.uuid, change, self.records.event_ops([event])
        )
        if result is None:
            raise NotFound(f"blob {found.uuid} not found")
        return result


class ArtifactKind:
    """Artifact metadata lives in the artifact record; found by UUID or TYPE:NAME.

    A shared artifact's metadata is readable by every namespace, a trusted one's
    by the namespaces trusted (the service refuses changes by anyone but its owner).
    """

    def __init__(
        self, artifacts: Artifacts, records: Records, trusted_by: TrustedBy = no_trust
    ) -> None:
        self.artifacts = artifacts
        self.records = records
        self.trusted_by = trusted_by

    async def find(self, namespace: str, ref: str) -> Found:
        art = await find_visible(self.artifacts, namespace, ref, self.trusted_by)
        if art is None:
            raise NotFound(f"artifact {ref!r} not found")
        return Found(art.uuid, art.namespace, art.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        result = await self.artifacts.update_metadata(
            found.uuid, change, self.records.event_ops([event])
        )
        if result is None:
            raise NotFound(f"artifact {found.uuid} not found")
        return result


class NamespaceKind:
    """Namespace metadata lives in the namespace record; found by name."""

    def __init__(self, namespaces: NamespaceService, records: Records) -> None:
        self.namespaces = namespaces
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        ns = self.namespaces.get(namespace, ref)
        return Found(ns.name, ns.name, ns.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        result = await self.namespaces.update_metadata(found.uuid, change)
        await self.records.add_events(found.namespace, [event])
        return result


class NetworkKind:
    """Network metadata lives in the network record; found by UUID or name."""

    def __init__(self, networks: NetworkRecords, records: Records) -> None:
        self.networks = networks
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        net: Network | None = None
        if looks_like_uuid(ref):
            net = await self.networks.get_network(ref)
        if net is None:
            net = await self.networks.find_network(namespace, ref)
        if net is None or not can_see(namespace, net.namespace):
            raise NotFound(f"network {ref!r} not found")
        return Found(net.uuid, net.namespace, net.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        async def read() -> Network:
            net = await self.networks.get_network(found.uuid)
            if net is None or net.state == DELETED:
                raise NotFound(f"network {found.uuid} not found")
            return net

        async def write(old: Network, new: Network) -> Network:
            put = Put(net_key(old.uuid), encode(new), old.version)
            await self.networks.store.commit([put, *self.records.event_ops([event])])
            return new

        def mutate(old: Network) -> Network:
            return old.with_changes(metadata=change(dict(old.metadata)))

        stored = await occ.update(read, mutate, write, f"network {found.uuid}")
        return stored.metadata


class InterfaceKind:
    """Interface metadata lives in the interface record; found by UUID."""

    def __init__(self, networks: NetworkRecords, records: Records) -> None:
        self.networks = networks
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        iface: Interface | None = None
        if looks_like_uuid(ref):
            iface = await self.networks.get_interface(ref)
        if iface is None or not can_see(namespace, iface.namespace):
            raise NotFound(f"interface {ref!r} not found")
        return Found(iface.uuid, iface.namespace, iface.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        async def read() -> Interface:
            iface = await self.networks.get_interface(found.uuid)
            if iface is None or iface.state == DELETED:
                raise NotFound(f"interface {found.uuid} not found")
            return iface

        async def write(old: Interface, new: Interface) -> Interface:
            put = Put(iface_key(old.uuid), encode(new), old.version)
            await self.networks.store.commit([put, *self.records.event_ops([event])])
            return new

        def mutate(old: Interface) -> Interface:
            return old.with_changes(metadata=change(dict(old.metadata)))

        stored = await occ.update(read, mutate, write, f"interface {found.uuid}")
        return stored.metadata


class NodeKind:
    """Node metadata lives in the node record; nodes are the system namespace's alone."""

    def __init__(self, records: Records) -> None:
        self.records = records

    async def find(self, namespace: str, ref: str) -> Found:
        require_system(namespace, "read or change node metadata")
        node = await self.records.get_node(ref)
        if node is None:
            raise NotFound(f"node {ref!r} not found")
        return Found(node_object(node.name), SYSTEM, node.metadata)

    def check(self, metadata: JsonDict) -> JsonDict:
        return check_metadata_size(metadata)

    async def update(self, found: Found, change: Change, event: Event) -> JsonDict:
        name = found.uuid.removeprefix(node_object(""))

        async def read() -> Node:
            node = await self.records.get_node(name)
            if node is None:
                raise NotFound(f"node {name!r} not found")
            return node

        async def write(old: Node, new: Node) -> Node:
            return await self.records.update_node(old, new, [event])

        def mutate(old: Node) -> Node:
            return old.with_changes(metadata=change(dict(old.metadata)))

        stored = await occ.update(read, mutate, write, f"node {name}")
        return stored.metadata


class MetadataService:
    """Get, set and delete metadata keys on any registered object type."""

    def __init__(
        self,
        kinds: dict[str, MetadataKind],
        event: Callable[..., Event],
    ) -> None:
        self.kinds = kinds
        self.event = event

    def _kind(self, object_type: str) -> MetadataKind:
        kind = self.kinds.get(object_type)
        if kind is None:
            known = ", ".join(sorted(self.kinds))
            raise InvalidArgument(
                f"object type {object_type!r} has no metadata here; known types: {known}"
            )
        return kind

    async def _find(self, namespace: str, object_type: str, ref: str) -> Found:
        kind = self._kind(object_type)
        if not ref:
            raise InvalidArgument(f"a {object_type} UUID or name is required")
        return await kind.find(namespace, ref)

    @staticmethod
    def _writable(namespace: str, object_type: str, found: Found) -> None:
        """Refuse a change of an owned object by anyone but its owner (or system).

        An object another namespace may read (an artifact shared with every
        namespace) is still changed only by its owner. Blobs belong to no
        namespace: their UUID is what lets one read them and annotate them.
        """
        if found.namespace and namespace not in (SYSTEM, found.namespace):
            raise PermissionDenied(
                f"only the {found.namespace} namespace may change this {object_type}'s metadata"
            )

    async def get(self, namespace: str, object_type: str, ref: str) -> JsonDict:
        """An object's whole metadata."""
        return (await self._find(namespace, object_type, ref)).metadata

    async def set(
        self, namespace: str, object_type: str, ref: str, key: str, value: Any
    ) -> JsonDict:
        """Set one key (reserved keys checked); returns the whole metadata afterwards."""
        check_metadata_key(key)
        kind = self._kind(object_type)
        kind.check({key: value})
        found = await self._find(namespace, object_type, ref)
        self._writable(namespace, object_type, found)

        def change(metadata: JsonDict) -> JsonDict:
            return kind.check({**metadata, key: value})

        event = self.event(found.uuid, "set metadata", "mutate", key=key, value=value)
        return await kind.update(found, change, event)

    async def delete(self, namespace: str, object_type: str, ref: str, key: str) -> JsonDict:
        """Remove one key (absent keys are fine); returns the whole metadata afterwards."""
        check_metadata_key(key)
        kind = self._kind(object_type)
        found = await self._find(namespace, object_type, ref)
        self._writable(namespace, object_type, found)
        if key not in found.metadata:
            return found.metadata

        def change(metadata: JsonDict) -> JsonDict:
            return {k: v for k, v in metadata.items() if k != key}

        event = self.event(found.uuid, "delete metadata", "mutate", key=key)
        return await kind.update(found, change, event)
