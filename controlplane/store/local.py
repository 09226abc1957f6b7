"""Coordination for a store one process owns (memory, RocksDB): watches and leases in-process.

``LocalCoordination`` wraps such a store and gives it the ``Coordinated``
port (store/protocol.py): its watches see every commit made through the
store (the adapter's ``observer`` hook tells it, in commit order), and its
leases are timed here. Only this process can keep its leases alive, so a
key tied to one is also recorded under ``LEASED`` (in the same batch), and
the first ``grant`` of a new process deletes what a previous one's leases
left. Several control planes in one process (tests) share one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.store.protocol import (
    Change,
    Coordinated,
    Delete,
    Item,
    LeaseExpired,
    Op,
    Put,
    Store,
    WatchLost,
    chunks,
)

# Where the keys tied to leases are recorded (never shown to watchers).
LEASED = b"\x00leased/"
# Batches a watcher may fall behind before its watch is lost.
WATCH_QUEUE = 10000


class Observable(Store, Protocol):
    """A one-process store that reports each accepted batch's changes."""

    observer: Callable[[list[Change]], None] | None


@dataclass
class _Lease:
    ttl: float
    deadline: float
    keys: set[bytes] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class _LocalWatch:
    """One watch: a bounded queue of batches fed by the owner; a WatchLost ends it."""

    def __init__(self, owner: LocalCoordination, prefix: bytes) -> None:
        self.owner = owner
        self.prefix = prefix
        self.queue: asyncio.Queue[list[Change] | WatchLost] = asyncio.Queue()
        self.lost = False

    def offer(self, changes: list[Change]) -> None:
        if self.lost:
            return
        mine = [c for c in changes if c.key.startswith(self.prefix)]
        if not mine:
            return
        if self.queue.qsize() >= WATCH_QUEUE:
            self.end("the watcher fell too far behind")
            return
        self.queue.put_nowait(mine)

    def end(self, reason: str) -> None:
        """Lose the watch: its reader gets WatchLost."""
        if not self.lost:
            self.lost = True
            self.queue.put_nowait(WatchLost(reason))

    async def __aenter__(self) -> AsyncIterator[list[Change]]:
        self.owner._watches.add(self)
        return self._changes()

    async def __aexit__(self, *exc: object) -> None:
        self.owner._watches.discard(self)

    async def _changes(self) -> AsyncIterator[list[Change]]:
        while True:
            batch = await self.queue.get()
            if isinstance(batch, WatchLost):
                raise batch
            yield batch


class LocalCoordination:
    """A one-process store with in-process watches and leases."""

    def __init__(self, inner: Observable, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.clock = clock
        self._watches: set[_LocalWatch] = set()
        self._leases: dict[int, _Lease] = {}
        self._ids = itertools.count(int(time.time() * 1000) % 1_000_000_000 + 1)
        self._swept = False
        inner.observer = self._observe

    # -- the store port ------------------------------------------------------

    async def get(self, key: bytes) -> Item | None:
        return await self.inner.get(key)

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        return await self.inner.scan(prefix, reverse=reverse, limit=limit, after=after)

    async def commit(self, ops: Sequence[Op]) -> None:
        extra: list[Op] = []
        tied: list[tuple[int, bytes]] = []
        for op in ops:
            lease = op.lease if isinstance(op, Put) else 0
            if lease:
                if self._live(lease) is None:
                    raise LeaseExpired(f"lease {lease} has ended")
                extra.append(Put(LEASED + op.key, str(lease).encode()))
                tied.append((lease, op.key))
            elif self._untie(op.key):
                extra.append(Delete(LEASED + op.key))
        await self.inner.commit([*ops, *extra])
        for lease, key in tied:
            found = self._leases.get(lease)
            if found is not None:
                found.keys.add(key)

    async def close(self) -> None:
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._leases.clear()
        for watch in list(self._watches):
            watch.end("the store was closed")
        await self.inner.close()

    # -- coordination --------------------------------------------------------

    def watch(self, prefix: bytes) -> _LocalWatch:
        return _LocalWatch(self, prefix)

    async def grant(self, ttl: float) -> int:
        if not self._swept:
            self._swept = True
            await self._sweep()
        lease_id = next(self._ids)
        lease = _Lease(ttl=ttl, deadline=self.clock() + ttl)
        self._leases[lease_id] = lease
        self._arm(lease_id, lease)
        return lease_id

    async def keep_alive(self, lease: int) -> None:
        found = self._live(lease)
        if found is None:
            raise LeaseExpired(f"lease {lease} has ended")
        found.deadline = self.clock() + found.ttl
        self._arm(lease, found)

    async def revoke(self, lease: int) -> None:
        found = self._leases.pop(lease, None)
        if found is None:
            return
        if found.timer is not None:
            found.timer.cancel()
        await self._delete_keys(lease, found.keys)

    # -- internals -----------------------------------------------------------

    def _observe(self, changes: list[Change]) -> None:
        visible = [c for c in changes if not c.key.startswith(LEASED)]
        if visible:
            for watch in list(self._watches):
                watch.offer(visible)

    def _live(self, lease: int) -> _Lease | None:
        found = self._leases.get(lease)
        if found is None or found.deadline <= self.clock():
            return None
        return found

    def _untie(self, key: bytes) -> bool:
        """Forget a key's lease (it is written without one, or deleted); whether it had one."""
        for lease in self._leases.values():
            if key in lease.keys:
                lease.keys.discard(key)
                return True
        return False

    def _arm(self, lease_id: int, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, lease.deadline - self.clock())
        lease.timer = loop.call_later(delay, self._expire, lease_id)

    def _expire(self, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        if lease.deadline > self.clock():  # kept alive meanwhile
            self._arm(lease_id, lease)
            return
        del self._leases[lease_id]
        asyncio.get_running_loop().create_task(self._delete_keys(lease_id, lease.keys))

    async def _delete_keys(self, lease_id: int, keys: set[bytes]) -> None:
        """Delete the keys still tied to an ended lease, with their records."""
        ops: list[Op] = []
        for key in sorted(keys):
            record = await self.inner.get(LEASED + key)
            if record is not None and record.value == str(lease_id).encode():
                ops += [Delete(key), Delete(LEASED + key)]
        for batch in chunks(ops):
            with contextlib.suppress(Exception):  # best effort; the next start sweeps
                await self.inner.commit(batch)

    async def _sweep(self) -> None:
        """Delete keys a previous process tied to its leases (they ended with it)."""
        ops: list[Op] = []
        for record in await self.inner.scan(LEASED):
            ops += [Delete(record.key[len(LEASED) :]), Delete(record.key)]
        for batch in chunks(ops):
            await self.inner.commit(batch)


def coordinated(store: Store) -> Coordinated:
    """The store itself when it coordinates (etcd, or already wrapped), else it wrapped here."""
    if hasattr(store, "watch") and hasattr(store, "grant"):
        return store  # type: ignore[return-value]
    if not hasattr(store, "observer"):
        raise TypeError(f"{type(store).__name__} can neither coordinate nor be observed")
    return LocalCoordination(store)  # type: ignore[arg-type]
