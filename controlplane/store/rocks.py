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
written. Groups are checked and written by one writer thread of the store's
own, which hands each group's outcomes back to the event loop in one call
(cheaper than a hop through ``asyncio.to_thread`` and a task per group,
which cost about 120 µs of CPU for every lone commit).

Point reads and bounded scans are served from RocksDB's memtable and block
cache in microseconds, far less than a hop to a worker thread (about 100 µs
here), so they run inline on the event loop; unbounded scans, writes,
flushes and closing go through ``asyncio.to_thread``. This departs from the
architecture guide's "every blocking call in a thread" on purpose, measured
by tools/bench_api.py (docs/benchmarks.md).

``observer``, when set, is called on the event loop with each accepted
batch's changes, in commit order, just before its caller learns it is
written; ``controlplane.store.local`` builds watches on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import rocksdict

from controlplane.store.protocol import (
    Change,
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
# A queued batch: its operations, its caller's future and the caller's loop.
_Queued = tuple[list[Op], "asyncio.Future[None]", asyncio.AbstractEventLoop]
# A batch's outcome for its caller: its changes (written) or the error.
_Outcome = tuple["asyncio.Future[None]", "list[Change] | StoreError"]
Observer = Callable[[list[Change]], None]
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
        # Batches waiting for the next group write, each with its caller's future and
        # loop; guarded by _queued, which the writer thread waits on.
        self._queue: list[_Queued] = []
        self._queued = threading.Condition()
        self._closing = False
        self._writer: threading.Thread | None = None
        self.observer: Observer | None = None

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
        check_batch(ops)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._queued:
            if self._closing:
                raise StoreError("the RocksDB store is closed")
            self._queue.append((list(ops), done, loop))
            self._queued.notify()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_groups, name="rocksdb group commit", daemon=True
                )
                self._writer.start()
        # A cancelled caller does not stop its batch: it is queued and will be written.
        await done

    async def close(self) -> None:
        with self._queued:
            self._closing = True
            self._queued.notify()
            writer = self._writer
        if writer is not None:
            await asyncio.to_thread(writer.join)
        await asyncio.to_thread(self._close)

    def _write_groups(self) -> None:
        """The writer thread: write the queued batches a group at a time until closed."""
        while True:
            with self._queued:
                while not self._queue and not self._closing:
                    self._queued.wait()
                if not self._queue:
                    return
                group, self._queue = self._queue, []
            try:
                outcomes: list[list[Change] | StoreError] = list(
                    self._commit_group([ops for ops, _, _ in group])
                )
            except Exception as exc:  # the write failed: every batch of the group failed
                error = exc if isinstance(exc, StoreError) else StoreError(f"RocksDB write: {exc}")
                outcomes = [error] * len(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for (_, done, loop), outcome in zip(group, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((done, outcome))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, settled, self.observer)

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

    def _commit_group(self, group: list[list[Op]]) -> list[list[Change] | StoreError]:
        """Check each batch in turn and write the accepted ones in one synced write."""
        with self._lock:
            # Versions as the accepted batches so far leave them (not yet written).
            versions: dict[bytes, int] = {}
            batch = rocksdict.WriteBatch(raw_mode=True)
            outcomes: list[list[Change] | StoreError] = []
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
                changes: list[Change] = []
                for op in ops:
                    if isinstance(op, Put):
                        versions[op.key] += 1
                        batch.put(op.key, _VERSION.pack(versions[op.key]) + op.value)
                        changes.append(Change(op.key, Item(op.key, op.value, versions[op.key])))
                    elif isinstance(op, Delete):
                        versions[op.key] = 0
                        batch.delete(op.key)
                        changes.append(Change(op.key, None))
                outcomes.append(changes)
            if any(isinstance(outcome, list) for outcome in outcomes):
                self._db.write(batch, self._sync)
            return outcomes

    def _version(self, key: bytes) -> int:
        raw = self._db.get(key)
        return 0 if raw is None else int(_VERSION.unpack_from(raw)[0])

    def _close(self) -> None:
        with self._lock:
            self._db.flush()
            self._db.close()


def _settle(settled: list[_Outcome], observer: Observer | None) -> None:
    """On the callers' loop: tell the observer, then each caller, its batch's outcome."""
    for done, outcome in settled:
        if isinstance(outcome, list) and observer is not None:
            observer(outcome)
        if done.cancelled():
            continue
        if isinstance(outcome, list):
            done.set_result(None)
        else:
            done.set_exception(outcome)


def _decode(key: bytes, raw: bytes) -> Item:
    (version,) = _VERSION.unpack_from(raw)
    return Item(key, raw[_VERSION.size :], version)
