"""Which replica holds each node's stream, for every replica to see.

When a node's stream registers on a replica, that replica records
``nodeconn/<node>`` (JSON: the replica's name, since when, the node's size)
tied to its lease (controlplane/replica.py), and deletes it, with a
compare-and-set of the version it wrote, when the stream ends; a replica
that dies takes its records with its lease. Every replica follows
``nodeconn/`` into ``where``, and ``node/`` (the node records) into
``states``, so it can tell a node connected to another replica from one
that is away, and place on it. ``on_gone`` is told of each node whose record
went (a stream that ended, or a replica that died).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from controlplane.model import Node, decode_node
from controlplane.replica import ReplicaLease
from controlplane.store.protocol import Change, Conflict, Delete, Item, Put, Store, StoreError

log = structlog.get_logger(__name__)

PREFIX = b"nodeconn/"
NODES = b"node/"


def key(node: str) -> bytes:
    """The store key recording where a node is connected."""
    return PREFIX + node.encode()


@dataclass(frozen=True)
class Connection:
    """A node's stream, as its replica recorded it."""

    node: str
    replica: str
    since: float
    cpus: int
    memory_mb: int
    version: int = 0


def encode(conn: Connection) -> bytes:
    """A nodeconn value."""
    return json.dumps(
        {
            "replica": conn.replica,
            "since": conn.since,
            "cpus": conn.cpus,
            "memory_mb": conn.memory_mb,
        }
    ).encode()


def decode(item: Item) -> Connection | None:
    """A nodeconn item (None if it cannot be read)."""
    try:
        data = json.loads(item.value)
        return Connection(
            node=item.key[len(PREFIX) :].decode(),
            replica=str(data["replica"]),
            since=float(data["since"]),
            cpus=int(data["cpus"]),
            memory_mb=int(data["memory_mb"]),
            version=item.version,
        )
    except (ValueError, KeyError, TypeError):
        return None


class Presence:
    """Where every node is connected, and every node's state, as the store says."""

    def __init__(self, store: Store, replica: ReplicaLease, clock: Callable[[], float]) -> None:
        self.store = store
        self.replica = replica
        self.clock = clock
        self.where: dict[str, Connection] = {}
        self.states: dict[str, str] = {}
        self.on_gone: Callable[[str], None] | None = None

    @property
    def name(self) -> str:
        """This replica's name."""
        return self.replica.name

    def elsewhere(self, node: str) -> Connection | None:
        """The node's stream if another replica holds it."""
        found = self.where.get(node)
        return found if found is not None and found.replica != self.name else None

    async def record(self, node: Node) -> Connection | None:
        """This replica holds the node's stream now (None if that could not be recorded)."""
        if not self.replica.lease:
            return None  # no lease granted yet: on_renewed records every stream once it is
        conn = Connection(node.name, self.name, self.clock(), node.cpus, node.memory_mb)
        try:
            await self.store.commit([Put(key(node.name), encode(conn), lease=self.replica.lease)])
            found = await self.store.get(key(node.name))
        except StoreError as exc:
            log.warning("cannot record where a node is connected", node=node.name, error=str(exc))
            return None
        mine = decode(found) if found is not None else None
        if mine is None or mine.replica != self.name:
            return None  # another replica took the node's stream meanwhile
        self.where[node.name] = mine
        return mine

    async def forget(self, conn: Connection) -> None:
        """The stream recorded as conn ended (a newer record, another replica's, stays)."""
        try:
            await self.store.commit([Delete(key(conn.node), expect=conn.version)])
        except Conflict:
            return
        except StoreError as exc:
            log.warning("cannot record a node's stream end", node=conn.node, error=str(exc))
            return
        found = self.where.get(conn.node)
        if found is not None and found.version == conn.version:
            del self.where[conn.node]

    # -- following the store ---------------------------------------------------

    def reset(self, items: list[Item]) -> None:
        """The whole of nodeconn/ as read."""
        before = set(self.where)
        self.where = {c.node: c for c in (decode(i) for i in items) if c is not None}
        for name in before - set(self.where):
            self._gone(name)

    def apply(self, changes: list[Change]) -> None:
        """Records written or deleted by any replica."""
        for change in changes:
            name = change.key[len(PREFIX) :].decode()
            conn = decode(change.item) if change.item is not None else None
            if conn is not None:
                self.where[name] = conn
            elif self.where.pop(name, None) is not None:
                self._gone(name)

    def reset_states(self, items: list[Item]) -> None:
        """Every node record as read."""
        self.apply_states([Change(i.key, i) for i in items])

    def apply_states(self, changes: list[Change]) -> None:
        """Node records written by any replica: their states."""
        for change in changes:
            if change.item is None:
                continue
            try:
                node = decode_node(change.item.value)
            except Exception:
                continue
            self.states[node.name] = node.state

    def _gone(self, name: str) -> None:
        if self.on_gone is not None:
            self.on_gone(name)
