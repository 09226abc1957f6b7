"""The control plane's metrics: every family it exposes, defined in one place.

``PlaneMetrics`` is made once by the composition root (``app.build``) on a
fresh ``Metrics`` registry and handed to the parts that count: the API
interceptor (RPCs), the store wrapper (store latency), the node registry
(node commands), the agent operation runner and the blob store. The gauges
computed at scrape time (instances, nodes, heartbeat ages, commands in
flight) are added by ``app.build`` from ``controlplane.gauges``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.metrics import Counter, Gauge, Histogram, Metrics


@dataclass
class PlaneMetrics:
    """The control plane's counters and histograms, on its own registry."""

    registry: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        m = self.registry
        self.rpc_requests: Counter = m.counter(
            "minicloud_rpc_requests",
            "gRPC calls served, by method and status code.",
            ["method", "code"],
        )
        self.rpc_duration: Histogram = m.histogram(
            "minicloud_rpc_duration_seconds", "Time to serve a gRPC call, by method.", ["method"]
        )
        self.store_duration: Histogram = m.histogram(
            "minicloud_store_operation_duration_seconds",
            "Time of each store operation (get, scan, commit).",
            ["operation"],
        )
        self.store_errors: Counter = m.counter(
            "minicloud_store_operation_errors",
            "Store operations that raised, by operation and error.",
            ["operation", "error"],
        )
        self.node_commands: Counter = m.counter(
            "minicloud_node_commands",
            "Commands sent to node agents that ended, by command and outcome.",
            ["command", "outcome"],
        )
        self.node_command_duration: Histogram = m.histogram(
            "minicloud_node_command_duration_seconds",
            "Time from sending a node command to its end, by command and outcome.",
            ["command", "outcome"],
        )
        self.agent_operations: Counter = m.counter(
            "minicloud_agent_operations",
            "Agent operations entering a state (queued, executing, complete, error), by command.",
            ["command", "state"],
        )
        self.agent_operation_duration: Histogram = m.histogram(
            "minicloud_agent_operation_duration_seconds",
            "Time an agent operation executed until it ended, by command and final state.",
            ["command", "state"],
        )
        self.blob_bytes: Counter = m.counter(
            "minicloud_blob_bytes",
            "Blob bytes stored (in) and read (out) by the control plane.",
            ["direction"],
        )
        for direction in ("in", "out"):
            self.blob_bytes.touch(direction=direction)
        self.leader: Gauge = m.gauge(
            "minicloud_leader",
            "1 while this replica leads (runs the work that must happen once), else 0.",
        )
        self.leader.set(0)
