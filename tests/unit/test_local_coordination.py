"""In-process coordination (store/local.py): what only a one-process store does."""

from __future__ import annotations

from controlplane.store.local import LEASED, LocalCoordination, coordinated
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Put


async def test_a_new_process_deletes_what_the_last_ones_leases_left() -> None:
    """Keys tied to a lease of a process that is gone are deleted at the next one's first grant."""
    data = MemoryStore.Data()
    first = LocalCoordination(MemoryStore(data))
    lease = await first.grant(30)
    await first.commit([Put(b"leader", b"a", lease=lease), Put(b"plain", b"v")])
    second = LocalCoordination(MemoryStore(data))  # "reopened" after a crash
    await second.grant(30)
    assert await second.get(b"leader") is None
    assert await second.get(b"plain") is not None
    assert await second.scan(LEASED) == []


async def test_watchers_never_see_the_lease_records() -> None:
    """A watch of every key sees the leased key, not its record under LEASED."""
    store = LocalCoordination(MemoryStore())
    lease = await store.grant(30)
    async with store.watch(b"") as changes:
        await store.commit([Put(b"k", b"v", lease=lease)])
        batch = await anext(changes)
    assert [c.key for c in batch] == [b"k"]


def test_coordinated_wraps_a_plain_store_once() -> None:
    """A plain store is wrapped; a coordinating one is used as it is."""
    wrapped = coordinated(MemoryStore())
    assert isinstance(wrapped, LocalCoordination)
    assert coordinated(wrapped) is wrapped
