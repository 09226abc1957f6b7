"""The registry of connected node agents and the commands in flight to them.

The node stream adapter turns protobuf into the wire's plain messages
(common.nodewire); the registry keeps one session per connected node, an outbox per session, a
future per command awaiting its result, each node's committed usage, and
the interactive console sessions relayed through each node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common import logs
from common.nodewire.commands import Command, Delivery
from common.nodewire.messages import ConsoleRelay, Result
from controlplane.errors import Unavailable
from controlplane.metrics import PlaneMetrics
from controlplane.model import Instance, Node
from controlplane.placement import Capacity


@dataclass(eq=False)
class ConsoleSink:
    """Where a node's console output for one session goes: a bounded queue; None ends it."""

    node: str
    queue: asyncio.Queue[ConsoleRelay | None]


@dataclass
class Session:
    """One connected node agent's stream."""

    node: Node
    outbox: asyncio.Queue[Delivery | ConsoleRelay | None] = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future[Result]] = field(default_factory=dict)
    last_seen: float = 0.0
    heartbeats: int = 0

    def close(self) -> None:
        """End the stream and fail every command still waiting for an answer."""
        self.outbox.put_nowait(None)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"node {self.node.name} disconnected"))
        self.pending.clear()


class NodeRegistry:
    """Connected nodes, their usage, and command routing."""

    def __init__(self, metrics: PlaneMetrics | None = None) -> None:
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self._usage: dict[str, dict[str, tuple[int, int]]] = {}
        self._totals: dict[str, tuple[int, int]] = {}
        self.consoles: dict[str, ConsoleSink] = {}
        # Each node's controlplane.nodestate state, as the node service last set it.
        self.states: dict[str, str] = {}

    def connect(self, node: Node, now: float) -> Session:
        """Register a node's new stream, closing any older one it had."""
        old = self.sessions.get(node.name)
        if old is not None:
            old.close()
        session = Session(node=node, last_seen=now)
        self.sessions[node.name] = session
        return session

    def disconnect(self, session: Session) -> bool:
        """Forget a stream that ended; whether it was the node's current one."""
        current = self.sessions.get(session.node.name) is session
        if current:
            del self.sessions[session.node.name]
            for session_id, sink in list(self.consoles.items()):
                if sink.node == session.node.name:
                    self.console_output(
                        ConsoleRelay(session_id, close=True, error="the node disconnected")
                    )
        session.close()
        return current

    def connected(self, name: str) -> bool:
        """Whether a node has a live stream."""
        return name in self.sessions

    def load_usage(self, instances: Iterable[Instance]) -> None:
        """Count what placed, live instances use on each node (at start-up)."""
        for instance in instances:
            if instance.node and instance.state != "deleted":
                self.add_usage(instance)

    def add_usage(self, instance: Instance) -> None:
        """Count an instance against its node."""
        self.release_usage(instance)
        spec = instance.spec
        self._usage.setdefault(instance.node, {})[instance.uuid] = (spec.cpus, spec.memory)
        self._adjust(instance.node, spec.cpus, spec.memory)

    def release_usage(self, instance: Instance) -> None:
        """Stop counting an instance against its node."""
        used = self._usage.get(instance.node, {}).pop(instance.uuid, None)
        if used is not None:
            self._adjust(instance.node, -used[0], -used[1])

    def _adjust(self, node: str, cpus: int, memory: int) -> None:
        total = self._totals.get(node, (0, 0))
        self._totals[node] = (total[0] + cpus, total[1] + memory)

    def capacities(self) -> list[Capacity]:
        """Size and usage of every connected node, for placement."""
        result = []
        for name, session in self.sessions.items():
            used_cpus, used_memory = self._totals.get(name, (0, 0))
            result.append(
                Capacity(
                    name=name,
                    cpus=session.node.cpus,
                    memory_mb=session.node.memory_mb,
                    used_cpus=used_cpus,
                    used_memory_mb=used_memory,
                    state=self.states.get(name, "created"),
                )
            )
        return result

    def committed(self, node: str) -> tuple[int, int]:
        """The vCPUs and MiB of memory a node's live instances are given."""
        return self._totals.get(node, (0, 0))

    def send(self, node: str, command: Command) -> asyncio.Future[Result]:
        """Queue a command for a node; the future resolves with its result.

        The command goes with the id of the request being served (from the
        logging context), so the node's logs of it carry that id too.
        """
        session = self.sessions.get(node)
        if session is None:
            raise Unavailable(f"node {node} is not connected; try again later")
        future = session.pending.get(command.command_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            session.pending[command.command_id] = future
            if self.metrics is not None:
                future.add_done_callback(_meter(self.metrics, type(command).__name__))
        session.outbox.put_nowait(Delivery(command, logs.request_id()))
        return future

    def resolve(self, session: Session, result: Result) -> None:
        """Hand a command's result to whoever waits for it."""
        future = session.pending.pop(result.command_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    # -- interactive consoles ---------------------------------------------

    def console_attach(self, session_id: str, node: str, sink: ConsoleSink) -> None:
        """Route a console session's output from a node to a sink."""
        self.consoles[session_id] = sink

    def console_detach(self, session_id: str) -> None:
        """Stop routing a session (telling its node to close it, if connected)."""
        sink = self.consoles.pop(session_id, None)
        if sink is not None:
            session = self.sessions.get(sink.node)
            if session is not None:
                session.outbox.put_nowait(ConsoleRelay(session_id, close=True))

    def console_input(self, session_id: str, data: bytes) -> int:
        """Queue keystrokes for a session's node; returns the node's outbox depth."""
        sink = self.consoles.get(session_id)
        if sink is None:
            raise Unavailable("the console session has ended")
        session = self.sessions.get(sink.node)
        if session is None:
            raise Unavailable("the console's node is not connected")
        session.outbox.put_nowait(ConsoleRelay(session_id, data))
        return session.outbox.qsize()

    def console_output(self, relay: ConsoleRelay) -> None:
        """A node relayed console output (or the end): hand it to the session's sink.

        A sink that is full (its reader stalled) loses the session: it is ended
        with an error rather than buffering without bound.
        """
        sink = self.consoles.get(relay.session_id)
        if sink is None:
            return
        if relay.close:
            self.consoles.pop(relay.session_id, None)
            put_last(sink.queue, relay)
            return
        try:
            sink.queue.put_nowait(relay)
        except asyncio.QueueFull:
            self.console_detach(relay.session_id)
            put_last(
                sink.queue,
                ConsoleRelay(relay.session_id, close=True, error="console client too slow"),
            )


def _meter(metrics: PlaneMetrics, command: str) -> Callable[[asyncio.Future[Result]], None]:
    """A done callback counting and timing one node command by how it ended."""
    started = time.perf_counter()

    def done(future: asyncio.Future[Result]) -> None:
        if future.cancelled():
            outcome = "cancelled"  # its waiter gave up (a deadline, say)
        elif future.exception() is not None:
            outcome = "unavailable"  # the node disconnected
        else:
            outcome = "ok" if future.result().ok else "failed"
        metrics.node_commands.inc(command=command, outcome=outcome)
        elapsed = time.perf_counter() - started
        metrics.node_command_duration.observe(elapsed, command=command, outcome=outcome)

    return done


def put_last(queue: asyncio.Queue[ConsoleRelay | None], relay: ConsoleRelay | None) -> None:
    """Put a final message on a bounded queue, making room if needed."""
    while True:
        try:
            queue.put_nowait(relay)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
