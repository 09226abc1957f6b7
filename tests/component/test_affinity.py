"""Affinity at create time, with three fake-hypervisor nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import instances_pb2
from tests.component.conftest import (
    Api,
    FakeNode,
    create_request,
    namespace_api,
    start_fake_node,
)


@pytest.fixture
async def nodes(plane: ControlPlane) -> AsyncIterator[list[FakeNode]]:
    """Three identical fake nodes connected to the plane."""
    target = f"127.0.0.1:{plane.port}"
    started = [await start_fake_node(target, f"node{i}") for i in (1, 2, 3)]
    yield started
    for fake in started:
        await fake.stop()


async def test_affinity_brings_instances_together(api: Api, nodes: list[FakeNode]) -> None:
    """A positive weight for a tag places the instance beside the tagged one."""
    db = await api.Create(create_request("db", memory=2048, metadata={"tags": ["db"]}))
    # Without affinity, free memory sends the next instance elsewhere ...
    plain = await api.Create(create_request("plain"))
    assert plain.node != db.node
    # ... with it, the instance joins the database.
    app = await api.Create(create_request("app", metadata={"affinity": {"db": 10}}))
    assert app.node == db.node


async def test_anti_affinity_spreads_instances(api: Api, nodes: list[FakeNode]) -> None:
    """A negative weight keeps instances with that tag apart, even against free memory."""
    web = {"tags": ["web"], "affinity": {"web": -10}}
    placed = [(await api.Create(create_request(f"web{i}", metadata=web))).node for i in range(3)]
    assert sorted(placed) == ["node1", "node2", "node3"]


async def test_anti_affinity_beats_free_memory(api: Api, nodes: list[FakeNode]) -> None:
    """The emptiest node is skipped when it hosts an instance the new one avoids."""
    batch = await api.Create(create_request("batch", metadata={"tags": ["batch"]}))
    # Load the other two nodes so the batch node has the most free memory.
    others = [await api.Create(create_request(f"filler{i}", memory=1024)) for i in range(2)]
    assert batch.node not in {o.node for o in others}
    latency = await api.Create(create_request("latency", metadata={"affinity": {"batch": -1}}))
    assert latency.node != batch.node


async def test_hard_affinity_refused_when_unsatisfiable(api: Api, nodes: list[FakeNode]) -> None:
    """require_with_tag with no tagged instance anywhere is FAILED_PRECONDITION, nothing stored."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(
            create_request("needy", metadata={"affinity": {"require_with_tag": ["db"]}})
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hard affinity" in (info.value.details() or "")
    await api.Create(create_request("db", metadata={"tags": ["db"]}))
    needy = await api.Create(
        create_request("needy", metadata={"affinity": {"require_with_tag": ["db"]}})
    )
    db = await api.Get(instances_pb2.InstanceRef(ref="db"))
    assert needy.node == db.node


async def test_other_namespaces_do_not_count(
    plane: ControlPlane, api: Api, nodes: list[FakeNode]
) -> None:
    """Only the caller's own instances' tags are weighed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        other = await namespace_api(channel, "other")
        await other.Create(create_request("db", metadata={"tags": ["db"]}))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("app", metadata={"affinity": {"require_with_tag": ["db"]}}))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
