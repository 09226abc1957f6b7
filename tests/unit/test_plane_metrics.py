"""The control plane's counting parts: the timed store, node command outcomes, cached gauges."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.nodewire.commands import DestroyDomain
from common.nodewire.messages import Result
from controlplane.errors import Unavailable
from controlplane.gauges import InstanceCounts
from controlplane.hub import Hub
from controlplane.metrics import PlaneMetrics
from controlplane.model import Instance, Node
from controlplane.nodes import NodeRegistry
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Conflict, Put
from controlplane.store.records import Records
from controlplane.store.timed import TimedStore


async def values(metrics: PlaneMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await metrics.registry.render()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_timed_store_times_each_operation_and_counts_conflicts() -> None:
    """get, scan and commit are timed by name; a refused compare-and-set counts as Conflict."""
    metrics = PlaneMetrics()
    store = TimedStore(LocalCoordination(MemoryStore()), metrics)
    await store.commit([Put(b"k", b"v", expect=0)])
    await store.get(b"k")
    await store.scan(b"")
    with pytest.raises(Conflict):
        await store.commit([Put(b"k", b"w", expect=0)])
    got = await values(metrics)
    count = "minicloud_store_operation_duration_seconds_count"
    assert got[(count, (("operation", "commit"),))] == 2
    assert got[(count, (("operation", "get"),))] == 1
    assert got[(count, (("operation", "scan"),))] == 1
    errors = (("error", "Conflict"), ("operation", "commit"))
    assert got[("minicloud_store_operation_errors_total", errors)] == 1


async def test_node_commands_count_by_how_they_end() -> None:
    """A node command ends ok, failed, unavailable (its node went away) or cancelled."""
    metrics = PlaneMetrics()
    nodes = NodeRegistry(metrics)
    session = nodes.connect(Node("n1", "127.0.0.1", 2, 2048, "fake"), 0.0)
    ok = nodes.send("n1", DestroyDomain("a/1", "a"))
    failed = nodes.send("n1", DestroyDomain("b/1", "b"))
    cancelled = nodes.send("n1", DestroyDomain("c/1", "c"))
    gone = nodes.send("n1", DestroyDomain("d/1", "d"))
    nodes.resolve(session, Result("a/1", "a", True))
    nodes.resolve(session, Result("b/1", "b", False, "boom"))
    cancelled.cancel()
    assert len(session.pending) == 2  # cancelled and gone, until the node goes away
    nodes.disconnect(session)
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert ok.result().ok and not failed.result().ok
    with pytest.raises(Unavailable):
        gone.result()
    got = await values(metrics)
    for outcome in ("ok", "failed", "cancelled", "unavailable"):
        key = (("command", "DestroyDomain"), ("outcome", outcome))
        assert got[("minicloud_node_commands_total", key)] == 1, outcome
        assert got[("minicloud_node_command_duration_seconds_count", key)] == 1


async def test_instance_counts_read_the_records_at_most_once_per_ttl() -> None:
    """Instance counts are reused until ttl has passed, then read again."""
    records = Records(MemoryStore(), Hub())
    now = [0.0]
    calls = [0]
    real = records.list_instances

    async def counted() -> list[Instance]:
        calls[0] += 1
        return await real()

    records.list_instances = counted  # type: ignore[method-assign]
    counts = InstanceCounts(records, ttl=10, clock=lambda: now[0])
    assert await counts() == {} and calls[0] == 1
    now[0] = 9.9
    await counts()
    assert calls[0] == 1
    now[0] = 10.0
    await counts()
    assert calls[0] == 2
