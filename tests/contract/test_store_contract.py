"""The store contract, run against the RocksDB adapter, a real etcd and the in-memory fake.

The etcd half uses the session's etcd (tests/conftest.py), each test under a
key prefix of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from common import pki
from controlplane.store import etcd as etcd_adapter
from controlplane.store.etcd import EtcdStore, EtcdTls
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import (
    MAX_BATCH,
    Conflict,
    Delete,
    InvalidBatch,
    Op,
    Put,
    Store,
    StoreError,
    chunks,
)
from controlplane.store.rocks import RocksStore
from protos import etcd_rpc_pb2 as rpc
from protos import etcd_rpc_pb2_grpc as rpc_grpc
from tests.etcd_server import EtcdServer, TlsFiles, etcd_or_skip, start_etcd

Opener = Callable[[], Store]


@pytest.fixture(params=["rocks", "etcd", "memory"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A function that opens (or reopens) the same store location."""
    data = MemoryStore.Data()
    opened: list[Store] = []
    if request.param == "etcd":
        endpoint = request.getfixturevalue("etcd").endpoint
        prefix = request.getfixturevalue("etcd_prefix")

    def open_store() -> Store:
        store: Store
        if request.param == "rocks":
            store = RocksStore(tmp_path / "db")
        elif request.param == "etcd":
            store = EtcdStore([endpoint], prefix)
        else:
            store = MemoryStore(data)
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


async def test_batches_up_to_max_batch(opener: Opener) -> None:
    """A batch of MAX_BATCH operations, every one with an expectation, is applied whole."""
    store = opener()
    ops: list[Op] = [Put(f"m/{i:03d}".encode(), b"v", expect=0) for i in range(MAX_BATCH)]
    await store.commit(ops)
    assert len(await store.scan(b"m/")) == MAX_BATCH


async def test_oversized_batch_is_refused(opener: Opener) -> None:
    """A batch over MAX_BATCH is refused with InvalidBatch and nothing of it is applied."""
    store = opener()
    ops: list[Op] = [Put(f"m/{i:03d}".encode(), b"v") for i in range(MAX_BATCH + 1)]
    with pytest.raises(InvalidBatch):
        await store.commit(ops)
    assert await store.scan(b"m/") == []


async def test_key_named_twice_is_refused(opener: Opener) -> None:
    """A batch naming a key twice is refused with InvalidBatch, applying nothing."""
    store = opener()
    with pytest.raises(InvalidBatch):
        await store.commit([Put(b"a", b"1"), Put(b"b", b"1"), Delete(b"a")])
    assert await store.get(b"a") is None and await store.get(b"b") is None


async def test_chunks_commit_more_than_a_batch(opener: Opener) -> None:
    """chunks() cuts a long list into batches the store takes, in order."""
    store = opener()
    ops: list[Op] = [Put(f"c/{i:04d}".encode(), b"v") for i in range(3 * MAX_BATCH + 5)]
    for chunk in chunks(ops):
        await store.commit(chunk)
    assert [i.key for i in await store.scan(b"c/")] == [op.key for op in ops]


async def test_long_scans_are_whole(opener: Opener) -> None:
    """A scan returns every item however many there are (adapters that page must not stop)."""
    store = opener()
    keys = [f"s/{i:05d}".encode() for i in range(1205)]
    for chunk in chunks([Put(k, b"x" * 10) for k in keys]):
        await store.commit(chunk)
    assert [i.key for i in await store.scan(b"s/")] == keys
    assert [i.key for i in await store.scan(b"s/", reverse=True)] == keys[::-1]
    assert [i.key for i in await store.scan(b"s/", reverse=True, limit=700)] == keys[::-1][:700]
    assert [i.key for i in await store.scan(b"s/", limit=1001)] == keys[:1001]


async def test_concurrent_compare_and_set_has_one_winner(opener: Opener) -> None:
    """Of many concurrent creates of one key, exactly one wins; the others see Conflict."""
    store = opener()

    async def create(i: int) -> bool:
        try:
            await store.commit([Put(b"race", str(i).encode(), expect=0)])
        except Conflict:
            return False
        return True

    outcomes = await asyncio.gather(*(create(i) for i in range(20)))
    assert outcomes.count(True) == 1
    item = await store.get(b"race")
    assert item is not None and item.version == 1


async def test_acknowledged_commits_survive_reopen_one_by_one(opener: Opener) -> None:
    """Every acknowledged commit of a burst of concurrent ones is there after reopening.

    This states durability as far as a test in one process can (the adapter
    syncs before acknowledging; a power cut is not simulated here).
    """
    store = opener()
    await asyncio.gather(*(store.commit([Put(f"d/{i:03d}".encode(), b"v")]) for i in range(50)))
    await store.close()
    reopened = opener()
    assert len(await reopened.scan(b"d/")) == 50


async def test_etcd_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """With the CA and a client certificate the adapter works over TLS; without, it is refused."""
    etcd_or_skip()
    now = datetime.datetime.now(datetime.UTC)
    ca = pki.create_ca("contract", now)
    server = pki.issue(ca, "server", "etcd", now, sans=("127.0.0.1",))
    client = pki.issue(ca, "node", "controlplane", now)
    files = {
        name: tmp_path / f"{name}.pem"
        for name in ("ca", "server", "server-key", "client", "client-key")
    }
    for name, pem in zip(
        files, (ca.cert, server.cert, server.key, client.cert, client.key), strict=True
    ):
        files[name].write_bytes(pem)
    tls = TlsFiles(ca=files["ca"], cert=files["server"], key=files["server-key"])
    etcd = start_etcd(tmp_path / "etcd", tls=tls)
    try:
        store = EtcdStore(
            [etcd.endpoint],
            b"/tls/",
            tls=EtcdTls(ca=files["ca"], cert=files["client"], key=files["client-key"]),
            timeout=5,
        )
        await store.commit([Put(b"k", b"v", expect=0)])
        item = await store.get(b"k")
        assert item is not None and (item.value, item.version) == (b"v", 1)
        await store.close()
        anonymous = EtcdStore([etcd.endpoint], b"/tls/", tls=EtcdTls(ca=files["ca"]), timeout=2)
        with pytest.raises(StoreError):
            await anonymous.get(b"k")
        await anonymous.close()
    finally:
        etcd.stop()


async def test_max_batch_is_etcds_own_limit(
    etcd: EtcdServer, etcd_prefix: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the adapter's own check off, etcd takes MAX_BATCH ops but refuses one more, and
    refuses a key named twice: the port's limits are etcd's."""
    monkeypatch.setattr(etcd_adapter, "check_batch", lambda ops: None)
    store = EtcdStore([etcd.endpoint], etcd_prefix)
    try:
        await store.commit([Put(f"m/{i:03d}".encode(), b"v") for i in range(MAX_BATCH)])
        with pytest.raises(StoreError, match="too many operations"):
            await store.commit([Put(f"n/{i:03d}".encode(), b"v") for i in range(MAX_BATCH + 1)])
        with pytest.raises(StoreError, match="duplicate key"):
            await store.commit([Put(b"twice", b"1"), Put(b"twice", b"2")])
        assert await store.scan(b"n/") == [] and await store.get(b"twice") is None
    finally:
        await store.close()


async def test_etcd_scan_starts_again_when_its_revision_is_compacted(
    etcd: EtcdServer, etcd_prefix: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paged scan whose revision etcd compacts away between pages returns every item."""
    monkeypatch.setattr(etcd_adapter, "PAGE", 2)
    store = EtcdStore([etcd.endpoint], etcd_prefix)
    keys = [f"p/{i}".encode() for i in range(5)]
    await store.commit([Put(k, b"v") for k in keys])
    read = store._read
    compacted = False

    async def read_then_compact(request: rpc.RangeRequest) -> rpc.RangeResponse:
        nonlocal compacted
        reply = await read(request)
        if not compacted:
            compacted = True
            await store.commit([Put(b"later", b"v")])  # a newer revision to compact up to
            head = (await read(rpc.RangeRequest(key=b"x"))).header.revision
            async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
                await rpc_grpc.KVStub(channel).Compact(rpc.CompactionRequest(revision=head))
        return reply

    monkeypatch.setattr(store, "_read", read_then_compact)
    try:
        assert [i.key for i in await store.scan(b"p/")] == keys
    finally:
        await store.close()
