"""Each node's committed usage in the store: claims with compare-and-set, pipelined."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Change, Conflict, Item, Put, Store
from controlplane.usage import SharedUsage, decode, encode, key


async def stored(store: MemoryStore, node: str) -> tuple[int, int]:
    item = await store.get(key(node))
    return decode(item.value) if item is not None else (0, 0)


async def test_claims_in_flight_each_expect_the_version_the_one_before_leaves() -> None:
    """Several claims on one node computed before any commits all commit, in order."""
    store = MemoryStore()
    usage = SharedUsage(store)
    claims = [await usage.claim("n1", 1, 256) for _ in range(3)]
    assert [c.expect for c in claims] == [0, 1, 2]
    assert usage.used("n1") == (3, 768)
    for claim in claims:
        await store.commit([claim.op])
        usage.settle(claim, True)
    assert await stored(store, "n1") == (3, 768)
    assert usage.used("n1") == (3, 768)


async def test_a_claim_that_no_longer_fits_is_a_conflict() -> None:
    """A claim over the node's limit raises Conflict (the caller places again); a release
    never does."""
    usage = SharedUsage(MemoryStore())
    first = await usage.claim("n1", 2, 512, limit=(2.0, 1024.0))
    with pytest.raises(Conflict):
        await usage.claim("n1", 1, 256, limit=(2.0, 1024.0))
    release = await usage.claim("n1", -2, -512, limit=(2.0, 1024.0))
    assert release.expect == first.expect + 1


async def test_another_writer_makes_the_claim_conflict_and_the_next_one_reads_again() -> None:
    """A change by another replica fails our commit; the next claim is on the fresh value."""
    store = MemoryStore()
    usage = SharedUsage(store)
    await store.commit([Put(key("n1"), encode(4, 1024), expect=0)])  # another replica's
    claim = await usage.claim("n1", 1, 256)
    with pytest.raises(Conflict):
        await store.commit([claim.op])
    usage.settle(claim, False)
    again = await usage.claim("n1", 1, 256)
    await store.commit([again.op])
    usage.settle(again, True)
    assert await stored(store, "n1") == (5, 1280)


async def test_a_stale_node_waits_for_its_claims_in_flight_before_reading_again() -> None:
    """After a failed claim, a new one waits until the others in flight have settled."""
    store = MemoryStore()
    usage = SharedUsage(store)
    first = await usage.claim("n1", 1, 256)
    second = await usage.claim("n1", 1, 256)
    usage.settle(first, False)
    waiting = asyncio.create_task(usage.claim("n1", 1, 256))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    usage.settle(second, False)
    third = await asyncio.wait_for(waiting, 1)
    assert third.expect == 0


async def test_changes_from_the_watch_are_taken_while_nothing_is_in_flight() -> None:
    """Another replica's committed usage shows in used() once its change is seen."""
    usage = SharedUsage(MemoryStore())
    item = await _put(usage.store, "n1", 3, 768)
    usage.apply([Change(item.key, item)])
    assert usage.used("n1") == (3, 768)
    usage.apply([Change(item.key, None)])
    assert usage.used("n1") == (0, 0)


async def test_adjust_commits_a_change_on_its_own() -> None:
    """A move's usage change commits by itself, retrying when it loses a race."""
    store = MemoryStore()
    usage = SharedUsage(store)
    await store.commit([Put(key("n1"), encode(1, 256), expect=0)])
    await usage.adjust("n1", 2, 512)
    assert await stored(store, "n1") == (3, 768)


async def test_repair_stores_what_the_instances_add_up_to() -> None:
    """At start-up a missing or wrong key is set from the instance records."""
    store = MemoryStore()
    await store.commit([Put(key("n1"), encode(9, 9))])
    usage = SharedUsage(store)
    await usage.repair(await store.scan(b"usage/"), {"n1": (2, 512), "n2": (1, 256)})
    assert await stored(store, "n1") == (2, 512)
    assert await stored(store, "n2") == (1, 256)


async def test_repair_leaves_a_key_changed_since_it_was_read() -> None:
    """A key another replica changed after the read is left as that change made it."""
    store = MemoryStore()
    await store.commit([Put(key("n1"), encode(1, 256))])
    read = await store.scan(b"usage/")
    await store.commit([Put(key("n1"), encode(2, 512))])
    await SharedUsage(store).repair(read, {"n1": (1, 256)})
    assert await stored(store, "n1") == (2, 512)


async def _put(store: Store, node: str, cpus: int, memory: int) -> Item:
    await store.commit([Put(key(node), encode(cpus, memory))])
    item = await store.get(key(node))
    assert item is not None
    return item
