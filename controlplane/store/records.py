"""Typed records over the store port: instances, their indexes, events, nodes.

Key layout (all keys are UTF-8):

    inst/<uuid>                         instance record (JSON)
    name/<namespace>/<name>             -> uuid of the live instance with that name
    onnode/<node>/<uuid>                instance placed on a node (empty value)
    ev/<uuid>/<time ns, 20 digits>/<n>  event (JSON); newest last in key order
    evt/<type>/<time ns>/<uuid>/<n>     -> the event's ev/ key (oldest first per type, so
                                        pruning one type is a scan from the start)
    evindex                             marker: events written before evt/ existed are indexed
    node/<name>                         node record (JSON; its events are ev/node:<name>/...)
    creq/<namespace>/<client request id> -> uuid of the instance a create with that id made

Every write of an instance is a compare-and-set on its version, so two
writers never overwrite each other silently. Nothing is published from
here: Watch streams are fed from the store's own watch on ``inst/`` and
``ev/`` (controlplane/changefeed.py), so they see what every replica commits.

Scans of instance records (List, the gauges, name look-ups for system) keep
what they decoded: a record whose stored bytes and version are unchanged is
not decoded again (see ``_Decoded``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from controlplane.model import (
    Event,
    Instance,
    Node,
    decode_event,
    decode_instance,
    decode_node,
    encode,
)
from controlplane.store.protocol import MAX_BATCH, Delete, Item, Op, Put, Store, chunks

DELETED = "deleted"
_INST = b"inst/"
# At most this many decoded instance records are kept for scans (oldest dropped first).
DECODED_LIMIT = 50_000


def _inst_key(uuid: str) -> bytes:
    return f"inst/{uuid}".encode()


class _Decoded:
    """Instance records as last decoded, by key, reused while their bytes are unchanged.

    A hit needs the same version and the same stored bytes, so a record
    rewritten by anyone (another process sharing the store included) is
    decoded again. Records are frozen and their dicts are copied before any
    change (services/metadata.py), so sharing one decoded record is safe.
    """

    def __init__(self, limit: int = DECODED_LIMIT) -> None:
        self.limit = limit
        self._by_key: dict[bytes, tuple[bytes, int, Instance]] = {}

    def instance(self, item: Item) -> Instance:
        """The instance stored in item, decoded at most once per stored value."""
        cached = self._by_key.get(item.key)
        if cached is not None and cached[1] == item.version and cached[0] == item.value:
            return cached[2]
        instance = decode_instance(item.value).with_changes(version=item.version)
        if cached is None and len(self._by_key) >= self.limit:
            del self._by_key[next(iter(self._by_key))]
        self._by_key[item.key] = (item.value, item.version, instance)
        return instance


def _name_key(namespace: str, name: str) -> bytes:
    return f"name/{namespace}/{name}".encode()


def _request_key(namespace: str, request_id: str) -> bytes:
    return f"creq/{namespace}/{request_id}".encode()


def _node_key(name: str) -> bytes:
    return f"node/{name}".encode()


def _node_index_key(node: str, uuid: str) -> bytes:
    return f"onnode/{node}/{uuid}".encode()


class Records:
    """Reads and writes the control plane's records."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._seq = itertools.count()
        self._decoded = _Decoded()

    async def get_instance(self, uuid: str) -> Instance | None:
        """An instance by UUID (deleted ones included), or None."""
        item = await self.store.get(_inst_key(uuid))
        if item is None:
            return None
        return decode_instance(item.value).with_changes(version=item.version)

    async def find_by_name(self, namespace: str, name: str) -> Instance | None:
        """The live instance with that name in the namespace, or None."""
        item = await self.store.get(_name_key(namespace, name))
        return None if item is None else await self.get_instance(item.value.decode())

    async def list_instances(self) -> list[Instance]:
        """Every instance record."""
        return [self._decoded.instance(i) for i in await self.store.scan(_INST)]

    async def instances_after(self, after: str, limit: int) -> list[Instance]:
        """At most limit instance records in UUID order, past UUID after ("": from the first).

        One bounded store scan from the key of after, so reading a page costs
        the page, not the whole table.
        """
        start = _inst_key(after) if after else None
        items = await self.store.scan(_INST, limit=limit, after=start)
        return [self._decoded.instance(i) for i in items]

    async def uuids_on_node(self, node: str) -> list[str]:
        """UUIDs of the instances placed on a node and not yet deleted."""
        prefix = f"onnode/{node}/".encode()
        return [i.key[len(prefix) :].decode() for i in await self.store.scan(prefix)]

    async def created_by(self, namespace: str, request_id: str) -> str:
        """The uuid of the instance a create with this client request id made ("" if none)."""
        item = await self.store.get(_request_key(namespace, request_id))
        return "" if item is None else item.value.decode()

    async def create_instance(
        self,
        instance: Instance,
        events: Sequence[Event],
        extra: Sequence[Op] = (),
        request_id: str = "",
    ) -> Instance:
        """Store a new instance and claim its name (Conflict if the name is taken, or the
        client request id was used: see ``created_by``).

        ``extra`` operations (interface claims, say) commit in the same batch.
        """
        ops: list[Op] = [
            *extra,
            Put(_inst_key(instance.uuid), encode(instance), expect=0),
            Put(_name_key(instance.namespace, instance.spec.name), instance.uuid.encode(), 0),
        ]
        if request_id:
            key = _request_key(instance.namespace, request_id)
            ops.append(Put(key, instance.uuid.encode(), expect=0))
        if instance.node:
            ops.append(Put(_node_index_key(instance.node, instance.uuid), b""))
        await self.commit_with_events(ops, events)
        return instance.with_changes(version=1)

    async def update_instance(
        self, old: Instance, new: Instance, events: Sequence[Event] = (), extra: Sequence[Op] = ()
    ) -> Instance:
        """Replace old with new if nobody changed it meanwhile (else Conflict), with extra ops."""
        ops: list[Op] = [*extra, Put(_inst_key(new.uuid), encode(new), expect=old.version)]
        if new.state == DELETED and old.state != DELETED:
            ops.append(Delete(_name_key(new.namespace, new.spec.name)))
            if old.node:
                ops.append(Delete(_node_index_key(old.node, old.uuid)))
        elif new.node != old.node:
            if old.node:
                ops.append(Delete(_node_index_key(old.node, old.uuid)))
            if new.node:
                ops.append(Put(_node_index_key(new.node, new.uuid), b""))
        await self.commit_with_events(ops, events)
        return new.with_changes(version=old.version + 1)

    async def commit_with_events(self, ops: Sequence[Op], events: Sequence[Event]) -> None:
        """Commit ops and the events that tell of them: in one batch when that fits MAX_BATCH.

        When it does not (an instance with many interfaces, say), ops commit
        first as one batch and the events follow in batches of their own: a
        crash in between keeps the change and loses its events. ops longer than
        MAX_BATCH are refused (InvalidBatch); validation keeps callers below it.
        """
        event_ops = self.event_ops(events)
        if len(ops) + len(event_ops) <= MAX_BATCH:
            await self.store.commit([*ops, *event_ops])
            return
        await self.store.commit(ops)
        for chunk in chunks(event_ops, MAX_BATCH - MAX_BATCH % 2):
            await self.store.commit(chunk)

    async def add_events(self, namespace: str, events: Sequence[Event]) -> None:
        """Append events to their objects' logs (in batches of MAX_BATCH // 2 events).

        Each event and its type-index entry go in the same batch; a long list
        is not atomic as a whole (nothing needs it to be). ``namespace`` is
        the objects' (Watch streams learn an instance's from its record).
        """
        step = MAX_BATCH // 2
        for start in range(0, len(events), step):
            await self.store.commit(self.event_ops(events[start : start + step]))

    async def events(self, uuid: str, event_type: str = "", limit: int = 100) -> list[Event]:
        """An object's events, newest first, optionally of one type only."""
        prefix = f"ev/{uuid}/".encode()
        if not event_type:
            items = await self.store.scan(prefix, reverse=True, limit=limit)
            return [decode_event(i.value) for i in items]
        found: list[Event] = []
        for item in await self.store.scan(prefix, reverse=True):
            event = decode_event(item.value)
            if event.type == event_type:
                found.append(event)
                if len(found) >= limit:
                    break
        return found

    async def put_node(self, node: Node) -> None:
        """Record a node as it registered (no compare-and-set: see update_node)."""
        await self.store.commit([Put(_node_key(node.name), encode(node.with_changes(version=0)))])

    async def get_node(self, name: str) -> Node | None:
        """A node record by name (deleted ones included), or None."""
        item = await self.store.get(_node_key(name))
        return None if item is None else decode_node(item.value).with_changes(version=item.version)

    async def list_nodes(self) -> list[Node]:
        """Every node that ever registered."""
        return [
            decode_node(i.value).with_changes(version=i.version)
            for i in await self.store.scan(b"node/")
        ]

    async def update_node(
        self, old: Node | None, new: Node, events: Sequence[Event] = (), extra: Sequence[Op] = ()
    ) -> Node:
        """Write a node record if nobody changed it since old was read (else Conflict).

        ``old`` None: the node must not be recorded yet.
        """
        expect = 0 if old is None else old.version
        stored = new.with_changes(version=0)
        ops: list[Op] = [*extra, Put(_node_key(new.name), encode(stored), expect=expect)]
        await self.store.commit([*ops, *self.event_ops(events)])
        return new.with_changes(version=expect + 1)

    def event_ops(self, events: Sequence[Event]) -> list[Op]:
        """The puts that append events to their objects' logs (and the type index)."""
        ops: list[Op] = []
        for e in events:
            stamp = f"{int(e.timestamp * 1e9):020d}"
            seq = f"{next(self._seq):08d}"
            key = f"ev/{e.object_uuid}/{stamp}/{seq}".encode()
            ops.append(Put(key, encode(e)))
            ops.append(Put(f"evt/{e.type}/{stamp}/{e.object_uuid}/{seq}".encode(), key))
        return ops

    async def prune_events(self, event_type: str, before: float, batch: int = 512) -> int:
        """Delete events of one type stamped before a time; returns how many went.

        Reads the type index from its oldest end and stops at the first newer
        event, so the cost follows what is removed, not what is kept. Each
        event and its index entry go in the same batch (of at most MAX_BATCH).
        """
        prefix = f"evt/{event_type}/".encode()
        limit = f"{int(before * 1e9):020d}".encode()
        removed = 0
        while True:
            items = await self.store.scan(prefix, limit=batch)
            old = [i for i in items if i.key[len(prefix) : len(prefix) + 20] < limit]
            if old:
                ops: list[Op] = []
                for item in old:
                    ops += [Delete(item.key), Delete(item.value)]
                for chunk in chunks(ops, MAX_BATCH - MAX_BATCH % 2):
                    await self.store.commit(chunk)
                removed += len(old)
            if len(old) < batch:
                return removed

    async def index_old_events(self) -> int:
        """Once per store: add type-index entries for events written before the index."""
        if await self.store.get(b"evindex") is not None:
            return 0
        ops: list[Op] = []
        count = 0
        for item in await self.store.scan(b"ev/"):
            event = decode_event(item.value)
            _, stamp, seq = item.key.rsplit(b"/", 2)
            index = f"evt/{event.type}/{stamp.decode()}/{event.object_uuid}/{seq.decode()}"
            ops.append(Put(index.encode(), item.key))
            count += 1
            if len(ops) >= MAX_BATCH - 1:  # room for the evindex put of the last batch
                await self.store.commit(ops)
                ops = []
        await self.store.commit([*ops, Put(b"evindex", b"1")])
        return count
