"""The control plane's gauges, computed at scrape time from its records and node registry.

``register`` adds them to a ``PlaneMetrics`` registry. Instances are counted
from one scan of their records, cached for ``ttl`` seconds so that however
many scrapers ask, the store is read at most once per ``ttl``. Nodes by
state are counted from their stored records, whose states the node table
(controlplane.nodestate) drives.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from common.metrics import Samples
from controlplane import nodestate
from controlplane.metrics import PlaneMetrics
from controlplane.nodes import NodeRegistry
from controlplane.store.records import Records


class InstanceCounts:
    """Instances by (lifecycle state, power state), from a cached scan of their records."""

    def __init__(
        self, records: Records, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.records = records
        self.ttl = ttl
        self.clock = clock
        self._read_at: float | None = None
        self._counts: Samples = {}

    async def __call__(self) -> Samples:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.ttl:
            found = Counter(
                (inst.state, inst.power_state) for inst in await self.records.list_instances()
            )
            self._counts = {key: float(n) for key, n in found.items()}
            self._read_at = now
        return self._counts


async def node_states(records: Records) -> Samples:
    """Known nodes by state (every state of the node table, zero when none is in it)."""
    found = Counter(node.state for node in await records.list_nodes())
    return {(state,): float(found.get(state, 0)) for state in nodestate.STATES}


def heartbeat_ages(nodes: NodeRegistry, clock: Callable[[], float]) -> Samples:
    """Seconds since each connected node's stream last carried a message."""
    now = clock()
    return {(name,): max(0.0, now - s.last_seen) for name, s in nodes.sessions.items()}


def commands_in_flight(nodes: NodeRegistry) -> Samples:
    """Commands sent to each connected node and not answered yet."""
    return {(name,): float(len(s.pending)) for name, s in nodes.sessions.items()}


def register(
    metrics: PlaneMetrics,
    records: Records,
    nodes: NodeRegistry,
    clock: Callable[[], float],
    agent_executing: Callable[[], int],
    instance_ttl: float,
) -> None:
    """Add every computed gauge of the control plane to its registry."""
    m = metrics.registry
    m.computed(
        "minicloud_instances",
        "Instances by lifecycle state and power state (deleted ones stay counted).",
        ["state", "power_state"],
        InstanceCounts(records, instance_ttl),
    )

    async def by_state() -> Samples:
        return await node_states(records)

    m.computed("minicloud_nodes", "Known nodes by state.", ["state"], by_state)
    m.computed(
        "minicloud_node_heartbeat_age_seconds",
        "Seconds since each connected node's stream last carried a message.",
        ["node"],
        lambda: heartbeat_ages(nodes, clock),
    )
    m.computed(
        "minicloud_node_commands_in_flight",
        "Commands sent to each connected node and not answered yet.",
        ["node"],
        lambda: commands_in_flight(nodes),
    )
    m.computed(
        "minicloud_agent_operations_executing",
        "Agent operations executing now.",
        [],
        lambda: {(): float(agent_executing())},
    )
