"""The registry of connected node agents and the commands in flight to them.

The node stream adapter turns protobuf into the wire's plain messages
(common.nodewire); the registry keeps one session per node connected to
this replica, an outbox per session, a future per command awaiting its
result, and the interactive console sessions relayed through each node.

With other replicas on the same store it also knows which nodes they hold
(controlplane/presence.py): such a node counts as connected, placement sees
it, and a command for it goes through the node's queue in the store
(controlplane/nodequeue.py), its future resolved when the holder writes
the result. The holder delivers each queued command once per stream and
writes the result back. Committed usage is the store's (controlplane/usage.py).
Interactive console sessions stay with the replica holding the node's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from common import logs
from common.nodewire.commands import Command, Delivery
from common.nodewire.convert import WireError, delivery_from_bytes, result_from_bytes
from common.nodewire.messages import ConsoleRelay, Result
from common.tasks import Tasks
from controlplane.errors import Unavailable
from controlplane.follow import follow
from controlplane.metrics import PlaneMetrics
from controlplane.model import Instance, Node
from controlplane.nodequeue import COMMANDS, RESULTS, CommandQueue
from controlplane.placement import Capacity
from controlplane.presence import NODES, Connection, Presence
from controlplane.presence import PREFIX as CONNECTIONS
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Conflict, Coordinated, StoreError
from controlplane.store.records import Records
from controlplane.usage import PREFIX as USAGE
from controlplane.usage import SharedUsage

log = structlog.get_logger(__name__)

# Command ids delivered from the store and answered lately (for FINISHED_FOR seconds),
# so a late copy of the queued command (its scan and its watch both saw it) is not
# delivered again.
FINISHED_MEMORY = 4096
FINISHED_FOR = 5.0
# Seconds a node whose record went (its replica died) may take to show up elsewhere
# before this replica records it as away.
LOST_GRACE = 1.0


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
    # Where this stream is recorded for the other replicas (None: not recorded).
    conn: Connection | None = None
    # Ids of commands delivered from the store's queue, awaiting their results.
    queued: set[str] = field(default_factory=set)

    def close(self) -> None:
        """End the stream and fail every command still waiting for an answer."""
        self.outbox.put_nowait(None)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"node {self.node.name} disconnected"))
        self.pending.clear()


class NodeRegistry:
    """Connected nodes (here and on other replicas), their usage, and command routing."""

    def __init__(
        self,
        metrics: PlaneMetrics | None = None,
        tasks: Tasks | None = None,
        usage: SharedUsage | None = None,
        presence: Presence | None = None,
        queue: CommandQueue | None = None,
    ) -> None:
        self.metrics = metrics
        self.tasks = tasks if tasks is not None else Tasks()
        self.usage = usage if usage is not None else SharedUsage(MemoryStore())
        self.presence = presence
        self.queue = queue
        self.sessions: dict[str, Session] = {}
        self.consoles: dict[str, ConsoleSink] = {}
        # Each node's controlplane.nodestate state, as the node service last set it
        # (and, with other replicas, as the node records they write say).
        self.states: dict[str, str] = {}
        # Commands sent through the store, by id: their futures.
        self._remote: dict[str, asyncio.Future[Result]] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        # Told of a node whose stream record went with no stream anywhere (the node
        # service records it away).
        self.on_lost: Callable[[str], Awaitable[None]] | None = None
        if presence is not None:
            presence.states = self.states
            presence.on_gone = self._gone
        if queue is not None:
            queue.on_command = self._queued
            queue.on_result = self._result

    # -- start-up and following the store ----------------------------------------

    async def load(self, store: Coordinated, records: Records) -> None:
        """At start-up: usage as the instance records add up, and where nodes are.

        The stored usage is read before the instances, so a key changed meanwhile
        (by another replica) is left as that change made it.
        """
        stored = await store.scan(USAGE)
        computed: dict[str, tuple[int, int]] = {}
        for instance in await records.list_instances():
            if instance.node and instance.state != "deleted":
                cpus, memory = computed.get(instance.node, (0, 0))
                computed[instance.node] = (
                    cpus + instance.spec.cpus,
                    memory + instance.spec.memory,
                )
        await self.usage.repair(stored, computed)
        self.usage.reset(await store.scan(USAGE))
        if self.presence is not None:
            self.presence.reset(await store.scan(CONNECTIONS))
            self.presence.reset_states(await store.scan(NODES))

    async def run(self, store: Coordinated) -> None:
        """Follow the other replicas' nodes, usage, commands and results, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(follow(store, USAGE, self.usage.reset, self.usage.apply))
            if self.presence is not None:
                presence = self.presence
                group.create_task(follow(store, CONNECTIONS, presence.reset, presence.apply))
                group.create_task(
                    follow(store, NODES, presence.reset_states, presence.apply_states)
                )
            if self.queue is not None:
                queue = self.queue
                group.create_task(
                    follow(store, COMMANDS, queue.reset_commands, queue.apply_commands)
                )
                group.create_task(follow(store, RESULTS, queue.reset_results, queue.apply_results))
                group.create_task(queue.sweep())

    async def rerecord(self) -> None:
        """Record every stream here again (the replica's lease was granted anew)."""
        if self.presence is None:
            return
        for session in list(self.sessions.values()):
            session.conn = await self.presence.record(session.node)

    # -- streams -------------------------------------------------------------------

    def connect(self, node: Node, now: float) -> Session:
        """Register a node's new stream, closing any older one it had."""
        old = self.sessions.get(node.name)
        if old is not None:
            old.close()
        session = Session(node=node, last_seen=now)
        self.sessions[node.name] = session
        return session

    async def announce(self, session: Session) -> None:
        """Tell the other replicas this replica holds the stream; deliver what is queued."""
        if self.presence is not None:
            session.conn = await self.presence.record(session.node)
        if self.queue is not None:
            try:
                queued = await self.queue.queued(session.node.name)
            except StoreError as exc:
                log.warning("cannot read a node's queue", node=session.node.name, error=str(exc))
                return
            for cid, raw in queued:
                self._deliver(session, cid, raw)

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

    async def withdraw(self, session: Session) -> None:
        """Delete the ended stream's record (unless a newer stream's replaced it)."""
        if self.presence is not None and session.conn is not None:
            await self.presence.forget(session.conn)

    def connected(self, name: str) -> bool:
        """Whether a node has a live stream (to this replica or another)."""
        if name in self.sessions:
            return True
        return self.presence is not None and self.presence.elsewhere(name) is not None

    def reconnecting(self) -> list[str]:
        """Known nodes whose stream is lost but that are not missing yet."""
        return [
            name
            for name, state in self.states.items()
            if state == "reconnecting" and not self.connected(name)
        ]

    def _gone(self, name: str) -> None:
        """A node's stream record went (another replica's stream ended, or it died)."""
        if self.on_lost is not None and name not in self.sessions:
            self.tasks.spawn(self._lost_later(name), name=f"node {name} lost")

    async def _lost_later(self, name: str) -> None:
        await asyncio.sleep(LOST_GRACE)
        if self.on_lost is not None and not self.connected(name):
            await self.on_lost(name)

    # -- usage -------------------------------------------------------------------------

    def add_usage(self, instance: Instance) -> None:
        """Count an instance against its node (in the store, in the background)."""
        spec = instance.spec
        self.tasks.spawn(self.usage.adjust(instance.node, spec.cpus, spec.memory), name="usage")

    def release_usage(self, instance: Instance) -> None:
        """Stop counting an instance against its node (in the store, in the background)."""
        spec = instance.spec
        self.tasks.spawn(self.usage.adjust(instance.node, -spec.cpus, -spec.memory), name="usage")

    def capacities(self) -> list[Capacity]:
        """Size and usage of every connected node (here or on another replica), for placement."""
        sizes = {name: (s.node.cpus, s.node.memory_mb) for name, s in self.sessions.items()}
        if self.presence is not None:
            for name, conn in self.presence.where.items():
                if name not in sizes and conn.replica != self.presence.name:
                    sizes[name] = (conn.cpus, conn.memory_mb)
        result = []
        for name, (cpus, memory) in sizes.items():
            used_cpus, used_memory = self.usage.used(name)
            result.append(
                Capacity(
                    name=name,
                    cpus=cpus,
                    memory_mb=memory,
                    used_cpus=used_cpus,
                    used_memory_mb=used_memory,
                    state=self.states.get(name, "created"),
                )
            )
        return result

    def committed(self, node: str) -> tuple[int, int]:
        """The vCPUs and MiB of memory a node's live instances are given."""
        return self.usage.used(node)

    # -- commands ----------------------------------------------------------------------

    def send(self, node: str, command: Command) -> asyncio.Future[Result]:
        """Queue a command for a node; the future resolves with its result.

        The command goes with the id of the request being served (from the
        logging context), so the node's logs of it carry that id too. A node
        connected to another replica gets it through the store.
        """
        session = self.sessions.get(node)
        if session is None:
            elsewhere = self.presence.elsewhere(node) if self.presence is not None else None
            if self.queue is not None and elsewhere is not None:
                return self._send_queued(node, command)
            raise Unavailable(f"node {node} is not connected; try again later")
        future = session.pending.get(command.command_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            session.pending[command.command_id] = future
            if self.metrics is not None:
                future.add_done_callback(_meter(self.metrics, type(command).__name__))
        session.outbox.put_nowait(Delivery(command, logs.request_id()))
        return future

    def _send_queued(self, node: str, command: Command) -> asyncio.Future[Result]:
        cid = command.command_id
        future = self._remote.get(cid)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._remote[cid] = future
            future.add_done_callback(self._forget_remote(cid))
            if self.metrics is not None:
                future.add_done_callback(_meter(self.metrics, type(command).__name__))
        delivery = Delivery(command, logs.request_id())
        self.tasks.spawn(self._enqueue(node, delivery, future), name=f"queue {cid}")
        return future

    def _forget_remote(self, cid: str) -> Callable[[asyncio.Future[Result]], None]:
        def done(future: asyncio.Future[Result]) -> None:
            if self._remote.get(cid) is future:
                del self._remote[cid]

        return done

    async def _enqueue(self, node: str, delivery: Delivery, future: asyncio.Future[Result]) -> None:
        assert self.queue is not None
        try:
            await self.queue.enqueue(node, delivery)
        except StoreError as exc:
            if not future.done():
                future.set_exception(Unavailable(f"cannot queue a command for node {node}: {exc}"))

    def resolve(self, session: Session, result: Result) -> None:
        """Hand a command's result to whoever waits for it (through the store if queued)."""
        future = session.pending.pop(result.command_id, None)
        if future is not None and not future.done():
            future.set_result(result)
        cid = result.command_id
        if cid in session.queued and self.queue is not None:
            session.queued.discard(cid)
            self._finished[cid] = time.monotonic()
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)
            self.tasks.spawn(self._finish(session.node.name, result), name=f"finish {cid}")

    async def _finish(self, node: str, result: Result) -> None:
        assert self.queue is not None
        try:
            await self.queue.finish(node, result)
        except StoreError as exc:
            log.warning(
                "cannot store a queued command's result",
                node=node,
                command=result.command_id,
                error=str(exc),
            )

    def _queued(self, node: str, cid: str, raw: bytes) -> None:
        """A command was queued for a node (by any replica): deliver it if the stream is here."""
        session = self.sessions.get(node)
        if session is not None:
            self._deliver(session, cid, raw)

    def _deliver(self, session: Session, cid: str, raw: bytes) -> None:
        if cid in session.queued:
            return
        finished = self._finished.get(cid)
        if finished is not None and time.monotonic() - finished < FINISHED_FOR:
            return
        try:
            delivery = delivery_from_bytes(raw)
        except WireError as exc:
            log.warning("unreadable queued command", node=session.node.name, error=str(exc))
            return
        session.queued.add(cid)
        session.outbox.put_nowait(delivery)

    def _result(self, cid: str, raw: bytes) -> None:
        """A queued command's result was stored: resolve the future if it is ours."""
        future = self._remote.get(cid)
        if future is None:
            return
        try:
            result = result_from_bytes(raw)
        except WireError as exc:
            log.warning("unreadable node result", command=cid, error=str(exc))
            return
        if not future.done():
            future.set_result(result)
        self.tasks.spawn(self._collect(cid), name=f"collect {cid}")

    async def _collect(self, cid: str) -> None:
        assert self.queue is not None
        try:
            await self.queue.collected(cid)
        except (Conflict, StoreError) as exc:
            log.info("cannot delete a collected node result", command=cid, error=str(exc))

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
