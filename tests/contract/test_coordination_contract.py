"""The coordination contract (watches and leases; store/protocol.py), on every coordinating store.

The one-process stores (memory, RocksDB) coordinate through
``LocalCoordination``; leases here are short so the suite stays fast. The
etcd half runs on the session's etcd (tests/conftest.py) under a key prefix
of its own (etcd rounds a lease's ttl up to whole seconds, 2 at least); the
tests at the end start a three-member etcd cluster of their own and kill
members of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from controlplane.store.etcd import EtcdStore
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import (
    Change,
    Coordinated,
    Delete,
    LeaseExpired,
    Put,
    StoreUnavailable,
    WatchLost,
)
from controlplane.store.rocks import RocksStore
from protos import etcd_rpc_pb2 as rpc
from protos import etcd_rpc_pb2_grpc as rpc_grpc
from tests.etcd_server import EtcdCluster, etcd_or_skip, start_etcd_cluster

TTL = 0.4
T = TypeVar("T")
Opener = Callable[[], Coordinated]


@pytest.fixture(params=["memory", "rocks", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Coordinated]:
    """A coordinating store of each kind."""
    made: Coordinated
    if request.param == "etcd":
        endpoint = request.getfixturevalue("etcd").endpoint
        made = EtcdStore([endpoint], request.getfixturevalue("etcd_prefix"))
    elif request.param == "rocks":
        made = LocalCoordination(RocksStore(tmp_path / "db"))
    else:
        made = LocalCoordination(MemoryStore())
    yield made
    with contextlib.suppress(Exception):
        await made.close()


async def next_batch(changes: AsyncIterator[list[Change]], timeout: float = 5.0) -> list[Change]:
    """The next batch a watch yields (failing the test if none comes in time)."""
    return await asyncio.wait_for(anext(changes), timeout)


async def nothing_more(changes: AsyncIterator[list[Change]], wait: float = 0.2) -> None:
    """Assert that a watch yields nothing within ``wait`` seconds."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(changes), wait)


async def test_a_watch_sees_each_later_commit_as_one_batch(store: Coordinated) -> None:
    """Every commit under the prefix after the watch starts arrives as one list, in order."""
    await store.commit([Put(b"w/before", b"0")])
    async with store.watch(b"w/") as changes:
        await store.commit([Put(b"w/a", b"1"), Put(b"w/b", b"2")])
        await store.commit([Put(b"w/a", b"3")])
        first = await next_batch(changes)
        second = await next_batch(changes)
    assert [(c.key, c.item.value if c.item else None) for c in first] == [
        (b"w/a", b"1"),
        (b"w/b", b"2"),
    ]
    assert [(c.key, c.item.version if c.item else None) for c in second] == [(b"w/a", 2)]


async def test_a_watch_sees_only_its_prefix(store: Coordinated) -> None:
    """Keys outside the prefix are left out; a commit with none under it yields nothing."""
    async with store.watch(b"w/") as changes:
        await store.commit([Put(b"other", b"x")])
        await store.commit([Put(b"other2", b"x"), Put(b"w/k", b"y")])
        batch = await next_batch(changes)
        await nothing_more(changes)
    assert [c.key for c in batch] == [b"w/k"]


async def test_a_delete_is_a_change_without_an_item(store: Coordinated) -> None:
    """A deleted key is reported with item None."""
    await store.commit([Put(b"w/k", b"v")])
    async with store.watch(b"w/") as changes:
        await store.commit([Delete(b"w/k")])
        batch = await next_batch(changes)
    assert batch == [Change(b"w/k", None)]


async def test_a_refused_batch_is_not_seen(store: Coordinated) -> None:
    """A batch refused for a failed expectation yields no change."""
    async with store.watch(b"w/") as changes:
        with contextlib.suppress(Exception):
            await store.commit([Put(b"w/k", b"v", expect=5)])
        await nothing_more(changes)


async def test_a_revoked_lease_deletes_its_keys(store: Coordinated) -> None:
    """Revoking a lease deletes the keys tied to it, and watchers see the deletes."""
    lease = await store.grant(30)
    await store.commit([Put(b"w/leased", b"v", lease=lease), Put(b"w/kept", b"v")])
    async with store.watch(b"w/") as changes:
        await store.revoke(lease)
        batch = await next_batch(changes)
    assert [c.key for c in batch] == [b"w/leased"] and batch[0].item is None
    assert await store.get(b"w/leased") is None
    assert await store.get(b"w/kept") is not None


async def test_a_lease_not_kept_alive_ends_after_its_ttl(store: Coordinated) -> None:
    """Without keep-alives a lease ends by itself and its keys go."""
    lease = await store.grant(TTL)
    await store.commit([Put(b"w/leased", b"v", lease=lease)])
    async with store.watch(b"w/") as changes:
        batch = await next_batch(changes, timeout=TTL + 5)
    assert batch == [Change(b"w/leased", None)]
    with pytest.raises(LeaseExpired):
        await store.keep_alive(lease)


async def test_keep_alive_extends_a_lease(store: Coordinated) -> None:
    """A lease kept alive outlives its ttl."""
    lease = await store.grant(TTL)
    await store.commit([Put(b"w/leased", b"v", lease=lease)])
    for _ in range(4):
        await asyncio.sleep(TTL / 3)
        await store.keep_alive(lease)
    assert await store.get(b"w/leased") is not None
    await store.revoke(lease)


async def test_a_put_under_an_ended_lease_is_refused_whole(store: Coordinated) -> None:
    """A batch that ties a key to an ended lease raises LeaseExpired and applies nothing."""
    lease = await store.grant(30)
    await store.revoke(lease)
    with pytest.raises(LeaseExpired):
        await store.commit([Put(b"w/free", b"v"), Put(b"w/leased", b"v", lease=lease)])
    assert await store.get(b"w/free") is None
    await store.revoke(lease)  # revoking an ended lease is no error


async def test_a_put_without_the_lease_unties_the_key(store: Coordinated) -> None:
    """A key written again without its lease stays when the lease ends."""
    lease = await store.grant(30)
    await store.commit([Put(b"w/k", b"v", lease=lease)])
    await store.commit([Put(b"w/k", b"free")])
    await store.revoke(lease)
    item = await store.get(b"w/k")
    assert item is not None and item.value == b"free"


# -- etcd: a cluster that loses members ------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of this test's own (members run --unsafe-no-fsync)."""
    etcd_or_skip()
    started = start_etcd_cluster(tmp_path / "cluster")
    yield started
    started.stop()


async def test_etcd_keeps_serving_when_a_member_is_killed(cluster: EtcdCluster) -> None:
    """With one of three members killed, gets, commits and a running watch go on."""
    store = EtcdStore(cluster.endpoints, b"/ha/", timeout=3.0)
    try:
        await store.commit([Put(b"w/before", b"0")])
        async with store.watch(b"w/") as changes:
            await store.commit([Put(b"w/a", b"1")])
            assert [c.key for c in await next_batch(changes)] == [b"w/a"]
            cluster.kill(0)  # the member both the calls and the watch stream went to
            # A call caught by the kill (or by the election after it, if the killed
            # member led) may fail as unavailable once; the store itself goes on.
            item = await again(lambda: store.get(b"w/before"))
            assert item is not None and item.value == b"0"
            await committed(store, Put(b"w/b", b"2"))
            batch = await next_batch(changes, timeout=15)
            assert [(c.key, c.item.value if c.item else None) for c in batch] == [(b"w/b", b"2")]
            await nothing_more(changes)
    finally:
        await store.close()


async def test_etcd_watch_is_lost_when_the_revisions_it_missed_are_compacted(
    cluster: EtcdCluster,
) -> None:
    """A watch whose stream breaks after etcd compacted what it had not seen raises WatchLost."""
    store = EtcdStore(cluster.endpoints, b"/ha/", timeout=3.0)
    other = EtcdStore(cluster.endpoints[1:], b"/ha/", timeout=3.0)
    first = cluster.members[0].process
    try:
        async with store.watch(b"w/") as changes:
            os.kill(first.pid, signal.SIGSTOP)  # the watch's member hears nothing from now on
            try:
                # The other two may first elect a new leader (the stopped one may have led).
                await committed(other, Put(b"w/missed", b"1"))
                await committed(other, Put(b"w/later", b"2"))
                async with grpc.aio.insecure_channel(cluster.endpoints[1]) as channel:
                    kv = rpc_grpc.KVStub(channel)
                    head = (await kv.Range(rpc.RangeRequest(key=b"x"))).header.revision
                    await kv.Compact(rpc.CompactionRequest(revision=head))
            finally:
                cluster.kill(0)  # the stream breaks; the revisions after it are gone
            with pytest.raises(WatchLost, match="compacted"):
                await next_batch(changes, timeout=15)
    finally:
        await store.close()
        await other.close()


async def committed(store: Coordinated, put: Put) -> None:
    """Commit put, again while the store is unavailable (a cluster electing a new leader)."""
    await again(lambda: store.commit([put]))


async def again(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """call(), again while it raises StoreUnavailable (as callers of the store do)."""
    for _ in range(attempts - 1):
        with contextlib.suppress(StoreUnavailable):
            return await call()
    return await call()
