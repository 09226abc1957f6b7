"""The RocksDB store adapter (via rocksdict): the only module that imports it.

Each value is stored behind an 8-byte big-endian version. Batches are checked
and written under one lock, so compare-and-set is atomic within the process
(one control plane owns one RocksDB directory).

Point reads, bounded scans and unsynced batch writes are served from RocksDB's
memtable and block cache in microseconds, far less than a hop to a worker
thread (about 100 µs here), so they run inline on the event loop; unbounded
scans, flushes and closing go through ``asyncio.to_thread``. This departs
from the architecture guide's "every blocking call in a thread" on purpose,
measured by tools/bench_api.py.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import rocksdict

from controlplane.store.protocol import Conflict, Delete, Item, Op, Put, StoreError, prefix_end

_VERSION = struct.Struct(">Q")
# Scans of at most this many items run inline; longer ones in a worker thread.
INLINE_SCAN_LIMIT = 1000


class RocksStore:
    """A versioned store in one RocksDB directory."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db = rocksdict.Rdict(str(path), options)
        except Exception as exc:  # rocksdict raises plain exceptions
            raise StoreError(f"cannot open RocksDB at {path}: {exc}") from exc
        self._lock = threading.Lock()

    async def get(self, key: bytes) -> Item | None:
        return self._get(key)

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        if limit is not None and limit <= INLINE_SCAN_LIMIT:
            return self._scan(prefix, reverse, limit, after)
        return await asyncio.to_thread(self._scan, prefix, reverse, limit, after)

    async def commit(self, ops: Sequence[Op]) -> None:
        self._commit(list(ops))

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _get(self, key: bytes) -> Item | None:
        raw = self._db.get(key)
        return None if raw is None else _decode(key, raw)

    def _scan(
        self, prefix: bytes, reverse: bool, limit: int | None, after: bytes | None
    ) -> list[Item]:
        found: list[Item] = []
        it = self._db.iter()
        if reverse:
            end = prefix_end(prefix)
            if after is not None and (end is None or after < end):
                end = after
            if end is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(end)
                if it.valid() and it.key() == end:
                    it.prev()
        elif after is not None and after >= prefix:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        else:
            it.seek(prefix)
        while it.valid() and (limit is None or len(found) < limit):
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append(_decode(key, it.value()))
            if reverse:
                it.prev()
            else:
                it.next()
        return found

    def _commit(self, ops: list[Op]) -> None:
        with self._lock:
            original = {op.key: self._version(op.key) for op in ops}
            for op in ops:
                if op.expect is not None and original[op.key] != op.expect:
                    raise Conflict(f"key {op.key!r} is not at version {op.expect}")
            versions = dict(original)
            batch = rocksdict.WriteBatch(raw_mode=True)
            for op in ops:
                if isinstance(op, Put):
                    versions[op.key] += 1
                    batch.put(op.key, _VERSION.pack(versions[op.key]) + op.value)
                elif isinstance(op, Delete):
                    versions[op.key] = 0
                    batch.delete(op.key)
            self._db.write(batch)

    def _version(self, key: bytes) -> int:
        raw = self._db.get(key)
        return 0 if raw is None else int(_VERSION.unpack_from(raw)[0])

    def _close(self) -> None:
        with self._lock:
            self._db.flush()
            self._db.close()


def _decode(key: bytes, raw: bytes) -> Item:
    (version,) = _VERSION.unpack_from(raw)
    return Item(key, raw[_VERSION.size :], version)
