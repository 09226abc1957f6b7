"""The store contract, run against the RocksDB adapter and the in-memory fake."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Conflict, Delete, Put, Store
from controlplane.store.rocks import RocksStore

Opener = Callable[[], Store]


@pytest.fixture(params=["rocks", "memory"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A function that opens (or reopens) the same store location."""
    data = MemoryStore.Data()
    opened: list[Store] = []

    def open_store() -> Store:
        store: Store = (
            RocksStore(tmp_path / "db") if request.param == "rocks" else MemoryStore(data)
        )
        opened.append(store)
        return store

    yield open_store
    if opened:
        with contextlib.suppress(Exception):
            await opened[-1].close()


async def test_missing_key_is_none(opener: Opener) -> None:
    """A key never written reads as None."""
    assert await opener().get(b"nope") is None


async def test_versions_count_writes(opener: Opener) -> None:
    """The first write makes version 1 and each later write adds one."""
    store = opener()
    await store.commit([Put(b"k", b"a")])
    await store.commit([Put(b"k", b"b")])
    item = await store.get(b"k")
    assert item is not None and (item.value, item.version) == (b"b", 2)


async def test_compare_and_set(opener: Opener) -> None:
    """A put expecting the current version succeeds; a stale one raises Conflict."""
    store = opener()
    await store.commit([Put(b"k", b"a", expect=0)])
    with pytest.raises(Conflict):
        await store.commit([Put(b"k", b"b", expect=0)])
    await store.commit([Put(b"k", b"c", expect=1)])
    item = await store.get(b"k")
    assert item is not None and item.value == b"c"


async def test_conflict_applies_nothing(opener: Opener) -> None:
    """A batch with one failed expectation leaves every key untouched."""
    store = opener()
    await store.commit([Put(b"a", b"1")])
    with pytest.raises(Conflict):
        await store.commit([Put(b"b", b"2"), Put(b"a", b"x", expect=5)])
    assert await store.get(b"b") is None
    item = await store.get(b"a")
    assert item is not None and item.value == b"1"


async def test_delete_and_expect_on_delete(opener: Opener) -> None:
    """Deletes remove keys, and a delete can be conditional too."""
    store = opener()
    await store.commit([Put(b"a", b"1"), Put(b"b", b"2")])
    with pytest.raises(Conflict):
        await store.commit([Delete(b"a", expect=2)])
    await store.commit([Delete(b"a", expect=1), Delete(b"b")])
    assert await store.get(b"a") is None and await store.get(b"b") is None
    await store.commit([Put(b"a", b"again")])
    item = await store.get(b"a")
    assert item is not None and item.version == 1


async def test_scan_prefix_order_reverse_and_limit(opener: Opener) -> None:
    """Scans return only the prefix, in key order or reversed, up to the limit."""
    store = opener()
    await store.commit([Put(k, b"") for k in (b"a/2", b"a/1", b"a/3", b"b/1", b"a", b"a0")])
    assert [i.key for i in await store.scan(b"a/")] == [b"a/1", b"a/2", b"a/3"]
    assert [i.key for i in await store.scan(b"a/", reverse=True)] == [b"a/3", b"a/2", b"a/1"]
    assert [i.key for i in await store.scan(b"a/", reverse=True, limit=2)] == [b"a/3", b"a/2"]
    assert [i.key for i in await store.scan(b"a/", limit=1)] == [b"a/1"]
    assert await store.scan(b"zzz") == []


async def test_scan_reverse_at_end_of_keyspace(opener: Opener) -> None:
    """A reverse scan works for a prefix with bytes 0xff and for the last keys."""
    store = opener()
    await store.commit([Put(b"\xff\x01", b""), Put(b"\xff\xff", b""), Put(b"\xfe", b"")])
    assert [i.key for i in await store.scan(b"\xff", reverse=True)] == [b"\xff\xff", b"\xff\x01"]


async def test_scan_after_resumes_past_a_key(opener: Opener) -> None:
    """A scan with after returns only the keys past it, in either direction, up to the limit."""
    store = opener()
    await store.commit([Put(k, b"") for k in (b"a/1", b"a/2", b"a/3", b"a/4", b"b/1", b"a")])

    async def keys(after: bytes, reverse: bool = False, limit: int | None = None) -> list[bytes]:
        found = await store.scan(b"a/", reverse=reverse, limit=limit, after=after)
        return [i.key for i in found]

    assert await keys(b"a/2") == [b"a/3", b"a/4"]
    assert await keys(b"a/2", limit=1) == [b"a/3"]
    assert await keys(b"a/25") == [b"a/3", b"a/4"]  # after need not exist
    assert await keys(b"a/3", reverse=True) == [b"a/2", b"a/1"]
    assert await keys(b"a/3", reverse=True, limit=1) == [b"a/2"]
    assert await keys(b"a/4") == [] and await keys(b"a/1", reverse=True) == []
    assert await keys(b"") == [b"a/1", b"a/2", b"a/3", b"a/4"]  # before the prefix: all of it
    assert await keys(b"zzz", reverse=True) == [b"a/4", b"a/3", b"a/2", b"a/1"]
    assert await keys(b"zzz") == [] and await keys(b"", reverse=True) == []


async def test_reopen_keeps_everything(opener: Opener) -> None:
    """What was committed is there, with versions, after close and reopen."""
    store = opener()
    await store.commit([Put(b"k", b"v"), Put(b"k2", b"v2")])
    await store.commit([Put(b"k", b"v3")])
    await store.close()
    reopened = opener()
    item = await reopened.get(b"k")
    assert item is not None and (item.value, item.version) == (b"v3", 2)
    assert [i.key for i in await reopened.scan(b"k")] == [b"k", b"k2"]
