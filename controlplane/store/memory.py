"""An in-memory store that honours the store contract (see store/protocol.py).

"Reopening" is modelled by passing the same ``MemoryStore.Data`` to a new
instance, so tests of restarts work without a disk. ``observer``, when set,
is called with each accepted batch's changes as it is applied (in commit
order); ``controlplane.store.local`` builds watches on it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from controlplane.store.protocol import Change, Conflict, Delete, Item, Op, Put, check_batch


class MemoryStore:
    """Items in a dict, with a sorted key list for scans."""

    class Data:
        """The contents, kept apart so a "reopened" store can share them."""

        def __init__(self) -> None:
            self.items: dict[bytes, tuple[int, bytes]] = {}
            self.keys: list[bytes] = []

    def __init__(self, data: Data | None = None) -> None:
        self.data = data if data is not None else MemoryStore.Data()
        self.observer: Callable[[list[Change]], None] | None = None

    async def get(self, key: bytes) -> Item | None:
        found = self.data.items.get(key)
        return None if found is None else Item(key, found[1], found[0])

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        keys = self.data.keys
        start = bisect.bisect_left(keys, prefix)
        end = start
        while end < len(keys) and keys[end].startswith(prefix):
            end += 1
        if after is not None and not reverse:
            start = max(start, bisect.bisect_right(keys, after, start, end))
        elif after is not None:
            end = min(end, bisect.bisect_left(keys, after, start, end))
        selected = keys[start:end]
        if reverse:
            selected.reverse()
        if limit is not None:
            selected = selected[:limit]
        return [Item(k, self.data.items[k][1], self.data.items[k][0]) for k in selected]

    async def commit(self, ops: Sequence[Op]) -> None:
        check_batch(ops)
        for op in ops:
            if op.expect is not None and self._version(op.key) != op.expect:
                raise Conflict(f"key {op.key!r} is not at version {op.expect}")
        changes: list[Change] = []
        for op in ops:
            if isinstance(op, Put):
                self._put(op.key, op.value)
                changes.append(Change(op.key, Item(op.key, op.value, self._version(op.key))))
            elif isinstance(op, Delete):
                self._delete(op.key)
                changes.append(Change(op.key, None))
        if self.observer is not None:
            self.observer(changes)

    async def close(self) -> None:
        return None

    def _version(self, key: bytes) -> int:
        found = self.data.items.get(key)
        return 0 if found is None else found[0]

    def _put(self, key: bytes, value: bytes) -> None:
        version = self._version(key)
        if version == 0:
            bisect.insort(self.data.keys, key)
        self.data.items[key] = (version + 1, value)

    def _delete(self, key: bytes) -> None:
        if self.data.items.pop(key, None) is not None:
            index = bisect.bisect_left(self.data.keys, key)
            del self.data.keys[index]
