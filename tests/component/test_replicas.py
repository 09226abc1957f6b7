"""Two control-plane replicas on one real etcd: Watch streams across them, one leader.

Both replicas run in this process, each with its own EtcdStore, data folder,
name and port, on the session's etcd (tests/conftest.py) under one key prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane, start
from controlplane.leadership import LEADER_KEY
from protos import instances_pb2
from tests.component.conftest import create_request, make_api, plane_settings, start_fake_node
from tests.etcd_server import EtcdServer, etcd_or_skip, start_etcd_cluster

# Leadership must move within this long of the leader's death (issue 15).
HANDOVER = 5.0


def replica_settings(data_dir: Path, etcd: EtcdServer, prefix: bytes, name: str) -> Any:
    """Test settings for a replica named name, with its state in etcd under prefix."""
    return dataclasses.replace(
        plane_settings(data_dir),
        name=name,
        store=f"etcd:http://{etcd.endpoint}",
        etcd_prefix=prefix.decode(),
        event_prune_interval=0.1,
    )


@pytest.fixture
async def replicas(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: bytes
) -> AsyncIterator[list[ControlPlane]]:
    """Replicas "cp-a" and "cp-b", serving; cp-a started first, so it leads and B follows."""
    planes: list[ControlPlane] = []
    for name in ("cp-a", "cp-b"):
        plane = await start(replica_settings(tmp_path / name, etcd, etcd_prefix, name))
        planes.append(plane)
        if name == "cp-a":
            await until(lambda: planes[0].leadership.leading)
    await until(lambda: planes[1].leadership.leader == "cp-a")  # B follows A
    yield planes
    for plane in planes:
        await plane.stop(0)


async def until(check: Any, timeout: float = 10.0) -> float:
    """Wait until check() holds; the seconds it took (fails the test after timeout)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > timeout:
            pytest.fail("the condition did not hold in time")
        await asyncio.sleep(0.02)
    return loop.time() - started


def count_prunes(plane: ControlPlane) -> list[float]:
    """Record when the plane's event pruner runs (it runs as it did, counted)."""
    runs: list[float] = []
    pruner = plane.parts.pruner
    prune_once = pruner.prune_once

    async def counted() -> dict[str, int]:
        runs.append(asyncio.get_running_loop().time())
        return await prune_once()

    pruner.prune_once = counted  # type: ignore[method-assign]
    return runs


async def gauge(plane: ControlPlane) -> str:
    """The minicloud_leader line of the plane's metrics."""
    text = (await plane.parts.metrics.registry.render()).decode()
    return next(line for line in text.splitlines() if line.startswith("minicloud_leader "))


async def test_a_create_through_one_replica_shows_on_a_watch_on_the_other(
    replicas: list[ControlPlane],
) -> None:
    """A Watch stream on replica B sees an instance created through A, each version once."""
    a, b = replicas
    node = await start_fake_node(f"127.0.0.1:{a.port}")
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
        ):
            api_a, api_b = await make_api(to_a), await make_api(to_b)
            stream = api_b.Watch(instances_pb2.WatchRequest())
            await asyncio.sleep(0.2)  # the Watch call is subscribed on B
            created = await api_a.Create(create_request("across"))
            seen: list[instances_pb2.Instance] = []
            events: list[str] = []
            while not seen or not _on(seen[-1]):
                update = await asyncio.wait_for(stream.read(), 10)
                if update.HasField("instance"):
                    assert update.instance.uuid == created.uuid
                    seen.append(update.instance)
                else:
                    events.append(update.event.message)
            stream.cancel()
        versions = [i.version for i in seen]
        assert versions == sorted(set(versions)), "each version once, in order"
        assert events, "the instance's events came too"
    finally:
        await node.close()


def _on(instance: instances_pb2.Instance) -> bool:
    return instance.state == "created" and instance.power_state == "on"


async def test_one_replica_leads_and_only_it_prunes(replicas: list[ControlPlane]) -> None:
    """The leader key names the first replica; the leader's work runs there and not on B."""
    a, b = replicas
    item = await a.store.get(LEADER_KEY)
    assert item is not None and item.value == b"cp-a"
    assert a.leadership.leading and not b.leadership.leading
    assert b.leadership.leader == "cp-a"
    assert (await gauge(a)).endswith(" 1.0") and (await gauge(b)).endswith(" 0.0")
    runs_a, runs_b = count_prunes(a), count_prunes(b)
    await asyncio.sleep(0.5)
    assert runs_a and not runs_b


async def test_a_stopped_leader_hands_over_at_once(replicas: list[ControlPlane]) -> None:
    """A leader that stops revokes its lease; the other replica leads (and prunes) at once."""
    a, b = replicas
    runs_b = count_prunes(b)
    replicas.remove(a)
    await a.stop(0)
    took = await until(lambda: b.leadership.leading and runs_b)
    assert took < 1.0
    item = await b.store.get(LEADER_KEY)
    assert item is not None and item.value == b"cp-b"


async def test_a_dead_leader_is_replaced_within_five_seconds(
    replicas: list[ControlPlane],
) -> None:
    """A leader that stops renewing without a word (as if killed) is replaced within 5 s."""
    a, b = replicas
    await a.tasks.stop()  # its lease renewals, leadership and leader work end; nothing revoked
    took = await until(lambda: b.leadership.leading, timeout=HANDOVER + 2)
    assert took < HANDOVER
    assert (await gauge(b)).endswith(" 1.0")


async def test_replicas_on_three_etcd_members_go_on_when_one_is_killed(tmp_path: Path) -> None:
    """With one of three etcd members killed, both replicas answer and a Watch carries on.

    Reads move to another member by themselves; a commit caught by the kill
    may fail once with UNAVAILABLE (its outcome unknown), which the caller
    retries, as clients do.
    """
    etcd_or_skip()
    cluster = start_etcd_cluster(tmp_path / "etcd")
    store = "etcd:" + ",".join(f"http://{e}" for e in cluster.endpoints)
    planes: list[ControlPlane] = []
    node = None
    try:
        for name in ("cp-a", "cp-b"):
            settings = dataclasses.replace(
                plane_settings(tmp_path / name), name=name, store=store, etcd_timeout=3.0
            )
            planes.append(await start(settings))
        a, b = planes
        node = await start_fake_node(f"127.0.0.1:{a.port}")
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
        ):
            api_a, api_b = await make_api(to_a), await make_api(to_b)
            stream = api_b.Watch(instances_pb2.WatchRequest())
            await asyncio.sleep(0.2)
            cluster.kill(0)  # every store's first endpoint: calls and watch streams went there
            listed = await api_b.List(instances_pb2.ListInstancesRequest())
            assert list(listed.instances) == []
            created = await retried(lambda: api_a.Create(create_request("after-kill")))
            while True:
                update = await asyncio.wait_for(stream.read(), 15)
                if update.HasField("instance") and update.instance.uuid == created.uuid:
                    break
            stream.cancel()
            await api_b.wait_for(created.uuid, _on, timeout=15)
    finally:
        if node is not None:
            await node.close()
        for plane in planes:
            await plane.stop(0)
        cluster.stop()


async def retried(call: Any, attempts: int = 3) -> Any:
    """call() again while it fails with UNAVAILABLE (as clients retry it)."""
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def test_replicas_started_together_on_a_new_store_all_come_up(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: bytes
) -> None:
    """Three replicas built at once on an empty store race to make the system namespace and
    its key; every one of them starts, and the system key logs in on each."""
    settings = [
        replica_settings(tmp_path / name, etcd, etcd_prefix, name) for name in ("r1", "r2", "r3")
    ]
    planes = await asyncio.gather(*(start(s) for s in settings))
    try:
        for plane in planes:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
                api = await make_api(channel)
                assert list((await api.List(instances_pb2.ListInstancesRequest())).instances) == []
    finally:
        for plane in planes:
            await plane.stop(0)
