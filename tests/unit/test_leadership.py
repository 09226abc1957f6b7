"""Leader election among replicas (controlplane/leadership.py) on the in-process store.

Replicas here share one ``LocalCoordination`` over a memory store, with
leases of a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from controlplane.leadership import LEADER_KEY, Leadership
from controlplane.replica import ReplicaLease
from controlplane.settings import Settings
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Coordinated, LeaseExpired, StoreUnavailable

TTL = 0.3


@dataclass(eq=False)
class Replica:
    """One replica's lease and leadership, with a record of the leader's work it ran."""

    name: str
    lease: ReplicaLease
    leadership: Leadership
    running: set[str] = field(default_factory=set)
    starts: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    changes: list[bool] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.lease.run()),
            asyncio.create_task(self.leadership.run()),
        ]

    async def die(self) -> None:
        """Stop without a word: no revoke, so its lease ends only by its ttl."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop as a control plane does: tasks first, then the lease revoked."""
        await self.die()
        await self.lease.close()


def replica(store: Coordinated, name: str, ttl: float = TTL) -> Replica:
    lease = ReplicaLease(store, ttl, name)
    made = Replica(name, lease, Leadership(store, lease, name, retry=0.05))

    async def work() -> None:
        made.starts += 1
        made.running.add("pruner")
        try:
            await asyncio.Event().wait()
        finally:
            made.running.discard("pruner")

    made.leadership.work = [("pruner", work)]
    made.leadership.on_change = made.changes.append
    return made


async def until(check: Callable[[], bool], timeout: float = 3.0) -> float:
    """Wait until check() holds; the seconds it took (fails the test after timeout)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > timeout:
            pytest.fail("the condition did not hold in time")
        await asyncio.sleep(0.01)
    return loop.time() - started


@pytest.fixture
async def store() -> AsyncIterator[LocalCoordination]:
    made = LocalCoordination(MemoryStore())
    yield made
    await made.close()


@pytest.fixture
async def replicas(store: LocalCoordination) -> AsyncIterator[list[Replica]]:
    made = [replica(store, "a"), replica(store, "b")]
    yield made
    for r in made:
        with contextlib.suppress(Exception):
            await r.stop()


async def test_a_lone_replica_leads_and_runs_the_leader_work(store: LocalCoordination) -> None:
    """One replica wins at once, writes its name in the leader key and starts the work."""
    a = replica(store, "a")
    a.start()
    try:
        await until(lambda: a.leadership.leading and a.running == {"pruner"})
        item = await store.get(LEADER_KEY)
        assert item is not None and item.value == b"a"
        assert a.changes == [True]
    finally:
        await a.stop()
    assert a.running == set() and a.changes == [True, False]


async def test_of_two_replicas_exactly_one_leads(replicas: list[Replica]) -> None:
    """Two replicas on one store: one leads and runs the work, the other follows it."""
    for r in replicas:
        r.start()
    await until(lambda: any(r.leadership.leading for r in replicas))
    await asyncio.sleep(TTL * 2)  # several renewals later, still one leader
    leaders = [r for r in replicas if r.leadership.leading]
    followers = [r for r in replicas if not r.leadership.leading]
    assert len(leaders) == 1 and leaders[0].running == {"pruner"} and leaders[0].starts == 1
    assert followers[0].running == set() and followers[0].starts == 0
    assert followers[0].leadership.leader == leaders[0].name


async def test_a_stopped_leader_hands_over_at_once(replicas: list[Replica]) -> None:
    """A leader that stops revokes its lease: the other leads well within one ttl."""
    for r in replicas:
        r.start()
    await until(lambda: any(r.leadership.leading for r in replicas))
    leader, other = sorted(replicas, key=lambda r: not r.leadership.leading)
    await leader.stop()
    took = await until(lambda: other.leadership.leading and other.running == {"pruner"})
    assert took < TTL


async def test_a_dead_leader_is_replaced_once_its_lease_ends(replicas: list[Replica]) -> None:
    """A leader that dies without revoking is replaced after its lease's ttl, not before."""
    for r in replicas:
        r.start()
    await until(lambda: any(r.leadership.leading for r in replicas))
    leader, other = sorted(replicas, key=lambda r: not r.leadership.leading)
    await leader.die()
    took = await until(lambda: other.leadership.leading, timeout=TTL * 5)
    assert TTL / 2 < took < TTL * 3


async def test_a_leader_whose_renewals_fail_steps_down(
    store: LocalCoordination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When keep-alive says the lease ended, the leader's work is cancelled at once."""
    a = replica(store, "a")
    a.start()
    try:
        await until(lambda: a.leadership.leading)

        async def ended(lease: int) -> None:
            raise LeaseExpired("gone")

        monkeypatch.setattr(store, "keep_alive", ended)
        await until(lambda: not a.leadership.leading and a.running == set(), timeout=TTL * 2)
        monkeypatch.undo()
        # Its old key goes with the old lease; then it campaigns again and leads.
        await until(lambda: a.leadership.leading and a.running == {"pruner"}, timeout=TTL * 5)
        assert a.starts == 2
    finally:
        await a.stop()


async def test_an_unreachable_store_costs_leadership_only_after_a_ttl(
    store: LocalCoordination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals that do not get through are retried; the leader steps down when a ttl passed."""
    a = replica(store, "a")
    a.start()
    try:
        await until(lambda: a.leadership.leading)

        async def unreachable(lease: int) -> None:
            raise StoreUnavailable("no answer")

        monkeypatch.setattr(store, "keep_alive", unreachable)
        took = await until(lambda: False in a.changes, timeout=TTL * 3)
        assert TTL / 2 < took <= TTL * 1.5
        assert a.changes[:2] == [True, False]
    finally:
        await a.stop()


def test_the_leader_ttl_is_a_setting_of_three_seconds_by_default() -> None:
    """MINICLOUD_LEADER_TTL sets the replica's lease ttl (3 s unset); 0 or less is refused."""
    plain = {"MINICLOUD_PLAINTEXT": "1"}
    assert Settings.from_env(plain).leader_ttl == 3.0
    assert Settings.from_env({**plain, "MINICLOUD_LEADER_TTL": "1.5"}).leader_ttl == 1.5
    with pytest.raises(ValueError, match="MINICLOUD_LEADER_TTL"):
        Settings.from_env({**plain, "MINICLOUD_LEADER_TTL": "0"})
