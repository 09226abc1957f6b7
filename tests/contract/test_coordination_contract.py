"""The coordination contract (watches and leases; store/protocol.py), on every coordinating store.

The one-process stores (memory, RocksDB) coordinate through
``LocalCoordination``; leases here are short so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import (
    Change,
    Coordinated,
    Delete,
    LeaseExpired,
    Put,
)
from controlplane.store.rocks import RocksStore

TTL = 0.4
Opener = Callable[[], Coordinated]


@pytest.fixture(params=["memory", "rocks"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Coordinated]:
    """A coordinating store of each kind."""
    made: Coordinated
    if request.param == "rocks":
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
