"""The optimistic-concurrency helpers, against stores whose commits lose races N times.

``Contended`` wraps the in-memory fake or the RocksDB adapter: for its first
``losses`` commits a rival writes every key the batch expects just before
it, so the real store refuses the batch with its own ``Conflict``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from controlplane.errors import Busy, NotFound, status_of
from controlplane.store import occ
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Item, Op, Put, Store, StoreError
from controlplane.store.rocks import RocksStore

KEY = b"k"


class Contended:
    """A store whose first ``losses`` commits are beaten by a rival writer."""

    def __init__(self, inner: Store, losses: int) -> None:
        self.inner = inner
        self.losses = losses
        self.applied = 0

    async def get(self, key: bytes) -> Item | None:
        return await self.inner.get(key)

    async def commit(self, ops: Sequence[Op]) -> None:
        if self.losses > 0:
            self.losses -= 1
            for op in ops:
                if op.expect is not None:
                    item = await self.inner.get(op.key)
                    rival = (item.value if item else b"") + b"+rival"
                    await self.inner.commit([Put(op.key, rival)])
        await self.inner.commit(ops)
        self.applied += 1


@pytest.fixture(params=["memory", "rocks"])
async def inner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store holding b"v" at KEY: the fake or the real adapter."""
    store: Store = MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "db")
    await store.commit([Put(KEY, b"v")])
    yield store
    await store.close()


class Counter:
    """A read-modify-write of KEY that appends b"!" and remembers what it read."""

    def __init__(self, store: Contended) -> None:
        self.store = store
        self.seen: list[bytes] = []

    async def read(self) -> Item:
        item = await self.store.get(KEY)
        if item is None:
            raise NotFound("no such key")
        self.seen.append(item.value)
        return item

    @staticmethod
    def mutate(item: Item) -> Item:
        return Item(item.key, item.value + b"!", item.version)

    async def write(self, old: Item, new: Item) -> Item:
        await self.store.commit([Put(KEY, new.value, expect=old.version)])
        return Item(KEY, new.value, old.version + 1)

    async def run(self) -> Item:
        return await occ.update(self.read, self.mutate, self.write, "key k")


async def test_succeeds_after_fewer_conflicts_than_attempts(inner: Store) -> None:
    """A step beaten ATTEMPTS - 1 times still commits, on its last try."""
    store = Contended(inner, occ.ATTEMPTS - 1)
    result = await Counter(store).run()
    assert result.value == b"v" + b"+rival" * (occ.ATTEMPTS - 1) + b"!"
    assert store.applied == 1
    item = await inner.get(KEY)
    assert item is not None and item.value == result.value


async def test_gives_up_with_busy_when_attempts_run_out(inner: Store) -> None:
    """Beaten on every one of ATTEMPTS tries, the step raises Busy and applies nothing."""
    store = Contended(inner, occ.ATTEMPTS)
    with pytest.raises(Busy, match="key k is changing too fast; try again") as caught:
        await Counter(store).run()
    assert caught.value.retryable
    assert status_of(caught.value) == ("FAILED_PRECONDITION", 409)
    item = await inner.get(KEY)
    assert item is not None and not item.value.endswith(b"!") and store.applied == 0


async def test_mutate_sees_the_fresh_record_each_try(inner: Store) -> None:
    """Every try reads again, so the change is applied to what the rivals wrote."""
    counter = Counter(Contended(inner, 2))
    await counter.run()
    assert counter.seen == [b"v", b"v+rival", b"v+rival+rival"]


async def test_other_errors_pass_straight_through(inner: Store) -> None:
    """An error that is not a Conflict ends the step at once, untried again."""
    counter = Counter(Contended(inner, 0))

    async def broken(old: Item, new: Item) -> Item:
        raise StoreError("disk on fire")

    with pytest.raises(StoreError, match="disk on fire"):
        await occ.update(counter.read, counter.mutate, broken, "key k")
    assert len(counter.seen) == 1
    with pytest.raises(NotFound):
        await Counter(Contended(MemoryStore(), 0)).run()


async def test_no_change_commits_nothing(inner: Store) -> None:
    """When mutate returns the value unchanged, update returns it and writes nothing."""
    store = Contended(inner, 0)
    counter = Counter(store)
    result = await occ.update(counter.read, lambda item: item, counter.write, "key k")
    assert result.value == b"v" and store.applied == 0
    item = await inner.get(KEY)
    assert item is not None and item.version == 1


async def test_retry_on_conflict_reruns_the_whole_step(inner: Store) -> None:
    """retry_on_conflict re-runs read, decide and commit until the commit wins."""
    store = Contended(inner, 3)
    runs = 0

    async def step() -> int:
        nonlocal runs
        runs += 1
        item = await store.get(KEY)
        assert item is not None
        await store.commit([Put(KEY, b"mine", expect=item.version)])
        return runs

    assert await occ.retry_on_conflict(step, "key k") == 4
    with pytest.raises(Busy):
        await occ.retry_on_conflict(step, "key k", attempts=0)


async def test_first_then_hands_out_the_known_copy_once() -> None:
    """first_then's reader returns the caller's copy first, then reads afresh."""
    reads = 0

    async def read() -> str | None:
        nonlocal reads
        reads += 1
        return "fresh"

    reader = occ.first_then("known", read)
    assert [await reader(), await reader(), reads] == ["known", "fresh", 1]
    assert await occ.first_then(None, read)() == "fresh"
