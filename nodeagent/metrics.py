"""The node agent's metrics: every family it exposes, defined in one place.

``NodeMetrics`` is made once by the entry point (``app.run``, or a test) on a
fresh ``Metrics`` registry and handed to the parts that count: the control
stream (commands run), the libvirt driver (call latency) and the blob client
(bytes moved). ``app.build`` adds the gauges computed at scrape time (guest
agent states, whether the control-plane stream is up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.metrics import Counter, Histogram, Metrics


@dataclass
class NodeMetrics:
    """The node agent's counters and histograms, on its own registry."""

    registry: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        m = self.registry
        self.commands: Counter = m.counter(
            "minicloud_node_agent_commands",
            "Commands from the control plane this agent ran, by command and outcome.",
            ["command", "outcome"],
        )
        self.command_duration: Histogram = m.histogram(
            "minicloud_node_agent_command_duration_seconds",
            "Time this agent took to run a command, by command and outcome.",
            ["command", "outcome"],
        )
        self.libvirt_calls: Histogram = m.histogram(
            "minicloud_libvirt_call_duration_seconds",
            "Time of each blocking libvirt call (run in a worker thread), by call.",
            ["call"],
        )
        self.libvirt_errors: Counter = m.counter(
            "minicloud_libvirt_call_errors", "libvirt calls that failed, by call.", ["call"]
        )
        self.stream_connections: Counter = m.counter(
            "minicloud_control_stream_connections",
            "Times the stream to the control plane was (re)established.",
        )
        self.blob_bytes: Counter = m.counter(
            "minicloud_blob_bytes",
            "Blob bytes moved through the control plane: downloaded (in) and uploaded (out).",
            ["direction"],
        )
        for direction in ("in", "out"):
            self.blob_bytes.touch(direction=direction)
