"""The node agent's stream to the control plane: dial, register, serve, redial.

On every (re)connect it registers, then sends its whole inventory so the
control plane can reconcile both ways. Commands run concurrently (the
executor serialises per instance); results and heartbeats join what every
other part sent to the agent's ``Outbox``, which the stream drains while
connected (converting each report as it goes out). Command handlers run
under one ``Tasks`` owner and end with ``run``. A lost stream is redialled
after a jittered, capped exponential backoff; the clock and randomness are
injected. With several control-plane addresses (``MINICLOUD_NODE_CONTROL_PLANE``
comma-separated) each redial goes to the next address after the one that was
lost or refused (``common.addresslist``); the control plane it reaches
reconciles the node as any reconnect does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog

from common import logs
from common.addresslist import AddressList
from common.nodewire.commands import Delivery, target_of
from common.nodewire.convert import (
    WireError,
    delivery_from_pb,
    register_to_pb,
    relay_from_pb,
    report_to_pb,
)
from common.nodewire.messages import (
    ConsoleRelay,
    Heartbeat,
    Inventory,
    Observation,
    Register,
    Report,
)
from common.tasks import Tasks
from nodeagent.credentials import Credentials, Metadata
from nodeagent.errors import FatalError
from nodeagent.executor import Executor
from nodeagent.membership import ForeignCluster
from nodeagent.metrics import NodeMetrics
from nodeagent.outbox import Outbox
from protos import node_pb2, node_pb2_grpc

if TYPE_CHECKING:
    from protos.node_pb2_grpc import NodeServiceAsyncStub

log = structlog.get_logger(__name__)

AGENT_VERSION = "0.1.0"
BATCH_LIMIT = 256


@dataclass(frozen=True)
class Identity:
    """How this node introduces itself."""

    name: str
    address: str
    cpus: int
    memory_mb: int
    hypervisor: str
    console_host: str = ""
    qemu_version: str = ""
    libvirt_version: str = ""
    disk_gb: int = 0


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)].

    The exponent stops growing at 30 (a node agent refused for days keeps counting
    attempts; 2.0**1024 would not fit a float).
    """
    return rng.uniform(0, min(cap, base * (2.0 ** min(attempt, 30))))


class ControlStream:
    """Keeps one stream to the control plane alive and serves it."""

    def __init__(
        self,
        target: str,
        identity: Identity,
        executor: Executor,
        credentials: Credentials,
        outbox: Outbox,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        on_connected: Callable[[list[Observation]], None] | None = None,
        on_disconnected: Callable[[], Awaitable[None]] | None = None,
        on_console: Callable[[ConsoleRelay], None] | None = None,
        metrics: NodeMetrics | None = None,
        on_registered: Callable[[str], None] | None = None,
    ) -> None:
        self.on_registered = on_registered
        self.metrics = metrics
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_console = on_console
        self.credentials = credentials
        self.outbox = outbox
        self.addresses = AddressList(target)
        self.identity = identity
        self.executor = executor
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.connected = asyncio.Event()
        self.connections = 0
        self.tasks = Tasks()

    @property
    def target(self) -> str:
        """The control-plane address dialled now."""
        return self.addresses.current

    async def run(self) -> None:
        """Dial and serve until cancelled, redialling with backoff when the stream is lost."""
        try:
            await self._dial_forever()
        finally:
            await self.tasks.stop()

    async def _dial_forever(self) -> None:
        attempt = 0
        while True:
            target = self.target
            try:
                async with self.credentials.channel(target) as channel:
                    stub: NodeServiceAsyncStub = node_pb2_grpc.NodeServiceStub(channel)
                    await self._serve(stub, await self.credentials.metadata(channel))
                attempt = 0
            except (asyncio.CancelledError, FatalError):
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.credentials.forget()
                log.warning(
                    "stream to control plane lost", code=exc.code().name, details=exc.details()
                )
            except (ConnectionError, ForeignCluster) as exc:
                log.error("control plane refused", error=str(exc))
            except Exception:
                log.exception("stream to control plane failed")
            finally:
                self.connected.clear()
                self.outbox.detach()
                # Lost or refused: the next dial goes to the next address (the same one
                # when there is only one).
                self.addresses.failed(target)
                if self.on_disconnected is not None:
                    await self.on_disconnected()
            delay = backoff(attempt, self.backoff_base, self.backoff_cap, self.rng)
            attempt += 1
            log.info(
                "redialling control plane",
                delay=round(delay, 2),
                attempt=attempt,
                target=self.target,
            )
            await self.sleep(delay)

    async def _serve(self, stub: NodeServiceAsyncStub, metadata: Metadata) -> None:
        outbox: asyncio.Queue[Report] = asyncio.Queue()
        ident = self.identity
        register = node_pb2.NodeMessage(
            register=register_to_pb(
                Register(
                    name=ident.name,
                    address=ident.address,
                    cpus=ident.cpus,
                    memory_mb=ident.memory_mb,
                    hypervisor=ident.hypervisor,
                    agent_version=AGENT_VERSION,
                    console_host=ident.console_host,
                    qemu_version=ident.qemu_version,
                    libvirt_version=ident.libvirt_version,
                    disk_gb=ident.disk_gb,
                )
            )
        )
        call = stub.Connect(_drain(register, outbox), metadata=metadata)
        first = await call.read()
        if not isinstance(first, node_pb2.ControlMessage) or not first.HasField("registered"):
            raise ConnectionError("control plane did not acknowledge registration")
        if self.on_registered is not None:
            # Which cluster it is: a control plane of another one is refused (raises).
            self.on_registered(first.registered.cluster_id)
        self.outbox.attach(outbox)
        self.connections += 1
        inventory = await self.executor.inventory()
        networks = await self.executor.networks_present()
        outbox.put_nowait(Inventory(tuple(inventory), tuple(networks)))
        if self.on_connected is not None:
            self.on_connected(inventory)
        self.connected.set()
        if self.metrics is not None:
            self.metrics.stream_connections.inc()
        log.info("connected to control plane", target=self.target, domains=len(inventory))
        heartbeat = asyncio.create_task(
            self._heartbeat(outbox, first.registered.heartbeat_interval)
        )
        try:
            while isinstance(message := await call.read(), node_pb2.ControlMessage):
                batch = message.batch.messages if message.HasField("batch") else (message,)
                for one in batch:
                    if one.HasField("command"):
                        try:
                            delivery = delivery_from_pb(one.command)
                        except WireError as exc:
                            log.warning("cannot read a command", error=str(exc))
                            continue
                        command = delivery.command
                        self.tasks.spawn(self._handle(delivery), name=command.command_id)
                    elif one.HasField("console") and self.on_console is not None:
                        self.on_console(relay_from_pb(one.console))
        finally:
            heartbeat.cancel()

    async def _handle(self, delivery: Delivery) -> None:
        # Runs in its own task, so what is bound here tags only this command's logs.
        command = delivery.command
        logs.bind(request_id=delivery.request_id or None, target=target_of(command))
        started = time.perf_counter()
        result = await self.executor.execute(command)
        if self.metrics is not None:
            kind, outcome = type(command).__name__, "ok" if result.ok else "failed"
            self.metrics.commands.inc(command=kind, outcome=outcome)
            elapsed = time.perf_counter() - started
            self.metrics.command_duration.observe(elapsed, command=kind, outcome=outcome)
        self.outbox.send(result)

    async def _heartbeat(self, outbox: asyncio.Queue[Report], interval: float) -> None:
        seq = 0
        while True:
            await self.sleep(interval or 5.0)
            seq += 1
            outbox.put_nowait(Heartbeat(seq, self.clock()))


async def _drain(
    register: node_pb2.NodeMessage, outbox: asyncio.Queue[Report]
) -> AsyncIterator[node_pb2.NodeMessage]:
    yield register
    while True:
        report = await outbox.get()
        try:
            message = report_to_pb(report)
        except Exception:  # one bad report must not take the stream down
            log.exception("cannot encode a report; dropped", kind=type(report).__name__)
            continue
        yield message
