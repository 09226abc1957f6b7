"""Event retention: each type pruned after its own number of days, in the background."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controlplane.app import ControlPlane, start
from controlplane.model import Event, encode
from controlplane.retention import DAY
from controlplane.settings import Settings
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Put
from protos import instances_pb2
from tests.component.conftest import Api, FakeNode, create_request, plane_settings

START = 1_000 * DAY


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """Time under the test's control."""
    return FakeClock()


@pytest.fixture
async def timed_plane(tmp_path: Path, clock: FakeClock) -> AsyncIterator[ControlPlane]:
    """A control plane on the fake clock whose background pruning waits an hour."""
    cp = await start(plane_settings(tmp_path / "cp"), MemoryStore(), clock)
    yield cp
    await cp.stop(0)


def event(uuid: str, kind: str, age_days: float, message: str = "") -> Event:
    return Event(uuid, kind, message or f"{kind} {age_days}", START - age_days * DAY, "cp")


async def test_each_type_is_kept_for_its_own_days(
    timed_plane: ControlPlane, clock: FakeClock
) -> None:
    """Old status (7 d) and usage (30 d) events go; audit and mutate (90 d) stay."""
    records = timed_plane.records
    await records.add_events(
        "system",
        [
            event("u1", "status", 8),
            event("u1", "status", 6),
            event("u1", "usage", 31),
            event("u1", "usage", 25),
            event("u1", "audit", 80),
            event("u1", "mutate", 80),
            event("u2", "audit", 91),
        ],
    )
    removed = await timed_plane.pruner.prune_once()
    assert removed == {"status": 1, "usage": 1, "audit": 1}
    left = [(e.object_uuid, e.message) for e in await records.events("u1")]
    assert sorted(left) == [
        ("u1", "audit 80"),
        ("u1", "mutate 80"),
        ("u1", "status 6"),
        ("u1", "usage 25"),
    ]
    assert await records.events("u2") == []
    prune = await records.events("cp-test", "prune")
    assert [(p.message, p.extra) for p in prune] == [
        ("pruned 3 old events", {"status": 1, "usage": 1, "audit": 1})
    ]
    # Two days later the 6-day-old status event has aged out too.
    clock.now += 2 * DAY
    assert await timed_plane.pruner.prune_once() == {"status": 1}
    assert [e.message for e in await records.events("u1", "status")] == []


async def test_pruning_reads_only_what_it_removes(
    timed_plane: ControlPlane, clock: FakeClock
) -> None:
    """Many batches of old events go in one pass; newer ones of the type are untouched."""
    records = timed_plane.records
    old = [event(f"o{i % 7}", "status", 10 + i / 1000) for i in range(1500)]
    new = [event("n", "status", 1)]
    await records.add_events("system", [*old, *new])
    assert await records.prune_events("status", START - 7 * DAY, batch=100) == 1500
    assert len(await records.events("n")) == 1
    assert await timed_plane.store.scan(b"evt/status/") != []


async def test_events_from_before_the_index_are_pruned_too(tmp_path: Path) -> None:
    """Events stored with only their ev/ key are indexed once, then pruned like the rest."""
    store = MemoryStore()
    legacy = event("old", "status", 30)
    await store.commit(
        [Put(f"ev/old/{int(legacy.timestamp * 1e9):020d}/00000000".encode(), encode(legacy))]
    )
    cp = await start(plane_settings(tmp_path / "cp"), store, FakeClock())
    try:
        await cp.pruner.prune_once()
        assert await cp.records.events("old") == []
        assert await store.get(b"evindex") is not None
    finally:
        await cp.stop(0)


async def test_background_task_prunes_at_its_interval(tmp_path: Path, clock: FakeClock) -> None:
    """The control plane prunes by itself every event_prune_interval seconds."""
    settings = dataclasses.replace(plane_settings(tmp_path / "cp"), event_prune_interval=0.05)
    cp = await start(settings, MemoryStore(), clock)
    try:
        await asyncio.sleep(0.01)
        await cp.records.add_events("system", [event("u", "usage", 40)])
        for _ in range(100):
            if not await cp.records.events("u"):
                break
            await asyncio.sleep(0.02)
        assert await cp.records.events("u") == []
        assert (await cp.records.events("cp-test", "prune"))[0].extra == {"usage": 1}
    finally:
        await cp.stop(0)


def test_retention_settings_load_from_the_environment() -> None:
    """MINICLOUD_RETAIN_<TYPE>_DAYS and MINICLOUD_EVENT_PRUNE_INTERVAL override the defaults."""
    settings = Settings.from_env(
        {
            "MINICLOUD_RETAIN_USAGE_DAYS": "3",
            "MINICLOUD_EVENT_PRUNE_INTERVAL": "60",
            "MINICLOUD_PLAINTEXT": "1",
        }
    )
    assert settings.retention_days()["usage"] == 3
    assert settings.retention_days()["audit"] == 90
    assert settings.retention_days()["status"] == 7
    assert settings.event_prune_interval == 60


async def test_unknown_event_type_filter_is_invalid_argument(api: Api, node: FakeNode) -> None:
    """GetEvents with a type that does not exist says which types do."""
    await api.Create(create_request())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.GetEvents(instances_pb2.GetEventsRequest(ref="vm1", event_type="bogus"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audit, mutate, status, usage" in (info.value.details() or "")
