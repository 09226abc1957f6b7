"""The RocksDB store adapter (via rocksdict): the only module that imports it.

Each value is stored behind an 8-byte big-endian version. Batches are checked
and written under one lock, so compare-and-set is atomic within the process
(one control plane owns one RocksDB directory).

Acknowledged means durable: every write syncs the write-ahead log
(``WriteOptions.sync``) before ``commit`` returns, and a write becomes
visible to readers only once it is synced. Syncs are grouped: commits that
arrive while a write is syncing queue up and go together in the next write
(one WAL sync for all of them). Each queued batch is still checked on its
own, against the store as the batches before it in the group leave it, so a
batch whose expectations fail is refused alone and the rest of its group is
written. The group is checked and written in a worker thread.

Point reads and bounded scans are served from RocksDB's memtable and block
cache in microseconds, far less than a hop to a worker thread (about 100 µs
here), so they run inline on the event loop; unbounded scans, writes,
flushes and closing go through ``asyncio.to_thread``. This departs from the
architecture guide's "every blocking call in a thread" on purpose, measured
by tools/bench_api.py (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import rocksdict

from controlplane.store.protocol import (
    Conflict,
    Delete,
    Item,
    Op,
    Put,
    StoreError,
    check_batch,
    prefix_end,
)

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
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        # Batches waiting for the next group write, each with its caller's future.
        self._queue: list[tuple[list[Op], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def get(self, key: bytes) -> Item | None:
        return self._get(key)

    async def scan(
        self, prefix: bytes, *, reverse: bool = False, limit: int | None = None
    ) -> list[Item]:
        if limit is not None and limit <= INLINE_SCAN_LIMIT:
            return self._scan(prefix, reverse, limit)
        return await asyncio.to_thread(self._scan, prefix, reverse, limit)

    async def commit(self, ops: Sequence[Op]) -> None:
        check_batch(ops)
        done = asyncio.get_running_loop().create_future()
        self._queue.append((list(ops), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_groups(), name="rocksdb group commit")
        await asyncio.shield(done)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)
        await asyncio.to_thread(self._close)

    async def _write_groups(self) -> None:
        """Write the queued batches, a group at a time, until none is left."""
        while self._queue:
            group, self._queue = self._queue, []
            try:
                outcomes: list[StoreError | None] = list(
                    await asyncio.to_thread(self._commit_group, [ops for ops, _ in group])
                )
            except Exception as exc:  # the write failed: every batch of the group failed
                error = exc if isinstance(exc, StoreError) else StoreError(f"RocksDB write: {exc}")
                outcomes = [error] * len(group)
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if done.cancelled():
                    continue
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)

    def _get(self, key: bytes) -> Item | None:
        raw = self._db.get(key)
        return None if raw is None else _decode(key, raw)

    def _scan(self, prefix: bytes, reverse: bool, limit: int | None) -> list[Item]:
        found: list[Item] = []
        it = self._db.iter()
        if reverse:
            end = prefix_end(prefix)
            if end is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(end)
                if it.valid() and it.key() == end:
                    it.prev()
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

    def _commit_group(self, group: list[list[Op]]) -> list[Conflict | None]:
        """Check each batch in turn and write the accepted ones in one synced write."""
        with self._lock:
            # Versions as the accepted batches so far leave them (not yet written).
            versions: dict[bytes, int] = {}
            batch = rocksdict.WriteBatch(raw_mode=True)
            outcomes: list[Conflict | None] = []
            for ops in group:
                for op in ops:
                    if op.key not in versions:
                        versions[op.key] = self._version(op.key)
                failed = next(
                    (op for op in ops if op.expect is not None and versions[op.key] != op.expect),
                    None,
                )
                if failed is not None:
                    outcomes.append(
                        Conflict(f"key {failed.key!r} is not at version {failed.expect}")
                    )
                    continue
                for op in ops:
                    if isinstance(op, Put):
                        versions[op.key] += 1
                        batch.put(op.key, _VERSION.pack(versions[op.key]) + op.value)
                    elif isinstance(op, Delete):
                        versions[op.key] = 0
                        batch.delete(op.key)
                outcomes.append(None)
            if any(outcome is None for outcome in outcomes):
                self._db.write(batch, self._sync)
            return outcomes

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
