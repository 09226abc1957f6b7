"""Each node's committed usage, kept in the store so every replica places against it.

``usage/<node>`` holds the vCPUs and MiB of memory the node's placed, live
instances are given (JSON). Whoever changes it (a create, a delete, a move)
puts the new total with a compare-and-set of the version it knows, in the
same batch as the instance record: two replicas that both think a node has
room cannot both commit, the loser gets ``Conflict``, re-reads and places
again. Every replica follows ``usage/`` (``reset``/``apply``) to keep its
view current.

Claims are pipelined: a replica making many creates on one node does not wait
for one commit before computing the next. Each claim expects the version the
node's key will have once the claims still in flight before it have
committed (a store applies one caller's commits in order); if one of them
fails the later ones conflict too and retry after one fresh read. So one
replica alone pays no extra read per create, and never fails a compare-and-set
against itself unless something failed first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from controlplane.store.protocol import Change, Conflict, Item, Op, Put, Store, StoreError

log = structlog.get_logger(__name__)

PREFIX = b"usage/"


def key(node: str) -> bytes:
    """The store key of a node's committed usage."""
    return PREFIX + node.encode()


def encode(cpus: int, memory_mb: int) -> bytes:
    """A usage value."""
    return json.dumps({"cpus": cpus, "memory_mb": memory_mb}).encode()


def decode(value: bytes) -> tuple[int, int]:
    """vCPUs and MiB from a usage value ((0, 0) for one that cannot be read)."""
    try:
        data = json.loads(value)
        return int(data["cpus"]), int(data["memory_mb"])
    except (ValueError, KeyError, TypeError):
        return 0, 0


@dataclass
class _Node:
    """What one node's key holds as far as this replica knows, and its claims in flight."""

    cpus: int = 0
    memory_mb: int = 0
    version: int = 0
    pending: int = 0
    pending_cpus: int = 0
    pending_memory: int = 0
    stale: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Claim:
    """One change of a node's usage: the put to commit, and what it changes."""

    node: str
    cpus: int
    memory_mb: int
    op: Put
    expect: int


class SharedUsage:
    """Every node's committed usage, as stored, with this replica's claims in flight."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._nodes: dict[str, _Node] = {}

    def _node(self, name: str) -> _Node:
        found = self._nodes.get(name)
        if found is None:
            found = self._nodes[name] = _Node()
        return found

    def used(self, node: str) -> tuple[int, int]:
        """vCPUs and MiB committed on a node, counting this replica's claims in flight."""
        found = self._nodes.get(node)
        if found is None:
            return 0, 0
        return found.cpus + found.pending_cpus, found.memory_mb + found.pending_memory

    async def claim(
        self, node: str, cpus: int, memory_mb: int, limit: tuple[float, float] | None = None
    ) -> Claim:
        """Claim (or, negative, release) usage on a node: the put to commit with the change.

        With ``limit`` (the node's vCPUs and MiB after overcommit), a claim that no
        longer fits raises Conflict: someone took the room since placement chose
        the node, so the caller places again. Every claim must be ``settle``d.
        """
        state = self._node(node)
        while state.stale:
            if state.pending:
                state.settled.clear()
                await state.settled.wait()
                continue
            await self._refresh(node, state)
        new_cpus = max(0, state.cpus + state.pending_cpus + cpus)
        new_memory = max(0, state.memory_mb + state.pending_memory + memory_mb)
        growing = cpus > 0 or memory_mb > 0
        if limit is not None and growing and (new_cpus > limit[0] or new_memory > limit[1]):
            raise Conflict(f"node {node} has no room left for the instance")
        expect = state.version + state.pending
        state.pending += 1
        state.pending_cpus += cpus
        state.pending_memory += memory_mb
        op = Put(key(node), encode(new_cpus, new_memory), expect=expect)
        return Claim(node, cpus, memory_mb, op, expect)

    def settle(self, claim: Claim, committed: bool) -> None:
        """A claim's batch committed (or not: the node is read again before its next claim)."""
        state = self._node(claim.node)
        state.pending -= 1
        state.pending_cpus -= claim.cpus
        state.pending_memory -= claim.memory_mb
        if committed:
            if claim.expect + 1 > state.version:
                state.version = claim.expect + 1
                state.cpus, state.memory_mb = decode(claim.op.value)
        else:
            state.stale = True
        if not state.pending:
            state.settled.set()

    async def adjust(self, node: str, cpus: int, memory_mb: int) -> None:
        """Change a node's usage on its own (a move's), retrying until it commits."""
        while True:
            claim = await self.claim(node, cpus, memory_mb)
            try:
                await self.store.commit([claim.op])
            except Conflict:
                self.settle(claim, False)
                continue
            except BaseException:
                self.settle(claim, False)
                raise
            self.settle(claim, True)
            return

    def forget(self, node: str) -> None:
        """Read a node's usage again before its next claim (a batch with a claim conflicted)."""
        self._node(node).stale = True

    async def _refresh(self, node: str, state: _Node) -> None:
        item = await self.store.get(key(node))
        state.cpus, state.memory_mb = decode(item.value) if item is not None else (0, 0)
        state.version = item.version if item is not None else 0
        state.stale = False

    # -- following the store ---------------------------------------------------

    def reset(self, items: list[Item]) -> None:
        """The whole prefix as read (a watch started): take every node without claims in flight."""
        seen = set()
        for item in items:
            name = item.key[len(PREFIX) :].decode()
            seen.add(name)
            self._take(name, item)
        for name, state in self._nodes.items():
            if name not in seen and not state.pending:
                state.stale = True

    def apply(self, changes: list[Change]) -> None:
        """Changes committed by anyone (this replica's own too)."""
        for change in changes:
            self._take(change.key[len(PREFIX) :].decode(), change.item)

    def _take(self, name: str, item: Item | None) -> None:
        state = self._node(name)
        if state.pending:
            return  # our claims in flight decide; a foreign change makes them conflict
        if item is None:
            state.cpus = state.memory_mb = state.version = 0
        elif item.version > state.version or state.stale:
            state.cpus, state.memory_mb = decode(item.value)
            state.version = item.version
        state.stale = False

    async def repair(self, stored: Iterable[Item], computed: Mapping[str, tuple[int, int]]) -> None:
        """At start-up: store what the instance records add up to where the key differs.

        ``stored`` must have been read before the instance records were, so any
        create or delete committed since makes the compare-and-set fail (and the
        key, which that change kept right, is left alone).
        """
        versions = {i.key[len(PREFIX) :].decode(): i for i in stored}
        ops: list[Op] = []
        for name in sorted(set(versions) | set(computed)):
            item = versions.get(name)
            want = computed.get(name, (0, 0))
            if item is not None and decode(item.value) == want:
                continue
            if item is None and want == (0, 0):
                continue
            ops.append(Put(key(name), encode(*want), expect=item.version if item else 0))
        for op in ops:
            try:
                await self.store.commit([op])
            except StoreError as exc:
                log.info("node usage changed meanwhile; left as is", key=op.key, error=str(exc))
        self._nodes.clear()
