"""The node agent's stream to the control plane: dial, register, serve, redial.

On every (re)connect it registers, then sends its whole inventory so the
control plane can reconcile both ways. Commands run concurrently (the
executor serialises per instance); results, observations, events and
heartbeats share one outbox. A lost stream is redialled after a jittered,
capped exponential backoff; the clock and randomness are injected.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog
from google.protobuf import json_format

from nodeagent.credentials import Credentials, Metadata
from nodeagent.executor import Executor
from nodeagent.messages import (
    AgentStatus,
    Command,
    ConsoleRelay,
    ExecOutput,
    Inventory,
    NodeEvent,
    Observation,
    Report,
    Result,
)
from nodeagent.network.protocol import Floating, Lease, NetworkConfig
from nodeagent.spec import DiskSpec, DomainSpec, NetworkSpec, NicSpec, VideoSpec
from protos import common_pb2, node_pb2, node_pb2_grpc

if TYPE_CHECKING:
    from protos.node_pb2_grpc import NodeServiceAsyncStub

log = structlog.get_logger(__name__)

AGENT_VERSION = "0.1.0"
OUTBOX_LIMIT = 100_000
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


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


def nic_from_pb(pb: common_pb2.NetworkInterface) -> NicSpec:
    """An interface from the wire."""
    return NicSpec(
        uuid=pb.uuid,
        network_uuid=pb.network_uuid,
        mac=pb.macaddr,
        ipv4=pb.ipv4,
        model=pb.model or "virtio",
        order=pb.order,
    )


def network_from_pb(pb: node_pb2.EnsureNetwork) -> NetworkConfig:
    """A network config from the wire."""
    return NetworkConfig(
        uuid=pb.network_uuid,
        vni=pb.vni,
        netblock=pb.netblock,
        gateway=pb.gateway,
        provide_dhcp=pb.provide_dhcp,
        provide_nat=pb.provide_nat,
        services_here=pb.services_here,
        leases=tuple(Lease(x.mac, x.address, x.hostname) for x in pb.leases),
        peers=tuple(pb.peers),
        egress_address=pb.egress_address,
        egress_gateway=pb.egress_gateway,
        floating=tuple(Floating(f.address, f.inner_address) for f in pb.floating),
        mtu=pb.mtu or 1450,
    )


def spec_from_pb(
    uuid: str,
    namespace: str,
    pb: common_pb2.InstanceSpec,
    interfaces: tuple[NicSpec, ...] = (),
) -> DomainSpec:
    """A domain spec from the wire."""
    return DomainSpec(
        uuid=uuid,
        name=pb.name,
        namespace=namespace,
        cpus=pb.cpus,
        memory_mb=pb.memory,
        disks=tuple(
            DiskSpec(d.size_gb, d.base, d.bus or "virtio", d.type or "disk") for d in pb.disks
        ),
        video=VideoSpec(
            pb.video.model or "cirrus", pb.video.memory or 16384, pb.video.vdi or "spice"
        ),
        side_channels=tuple(pb.side_channels),
        networks=tuple(
            NetworkSpec(n.network_uuid, n.macaddress, n.address, n.model or "virtio")
            for n in pb.networks
        ),
        ssh_key=pb.ssh_key,
        user_data=pb.user_data,
        metadata=json_format.MessageToDict(pb.metadata),
        uefi=pb.uefi,
        secure_boot=pb.secure_boot,
        interfaces=interfaces,
        nvram_template=pb.nvram_template,
        configdrive=pb.configdrive or "openstack-disk",
    )


def command_from_pb(pb: node_pb2.Command) -> Command:
    """A command from the wire."""
    action = pb.WhichOneof("action")
    if action == "create":
        nics = tuple(nic_from_pb(n) for n in pb.create.interfaces)
        spec = spec_from_pb(pb.instance_uuid, pb.create.namespace, pb.create.spec, nics)
        return Command(pb.command_id, pb.instance_uuid, "create", spec=spec)
    if action == "ensure_network":
        network = network_from_pb(pb.ensure_network)
        return Command(pb.command_id, pb.instance_uuid, "ensure-network", network=network)
    if action == "remove_network":
        return Command(pb.command_id, pb.instance_uuid, "remove-network")
    if action == "attach_interface":
        nic = nic_from_pb(pb.attach_interface.interface)
        return Command(pb.command_id, pb.instance_uuid, "attach-interface", nic=nic)
    if action == "power":
        power_spec = None
        if pb.power.HasField("domain"):
            power_spec = spec_from_pb(
                pb.instance_uuid, pb.power.domain.namespace, pb.power.domain.spec
            )
        return Command(
            pb.command_id,
            pb.instance_uuid,
            "power",
            power_action=pb.power.action,
            spec=power_spec,
        )
    if action == "agent":
        agent = {
            "kind": pb.agent.kind,
            "command_line": pb.agent.command_line,
            "env": dict(pb.agent.env),
            "cwd": pb.agent.cwd,
            "timeout": pb.agent.timeout,
            "path": pb.agent.path,
            "mode": pb.agent.mode,
            "blob_uuid": pb.agent.blob_uuid,
            "stream_output": pb.agent.stream_output,
        }
        return Command(pb.command_id, pb.instance_uuid, "agent", agent=agent)
    if action == "console":
        console = {
            "kind": pb.console.kind,
            "length": pb.console.length,
            "session_id": pb.console.session_id,
        }
        return Command(pb.command_id, pb.instance_uuid, "console", console=console)
    return Command(pb.command_id, pb.instance_uuid, action or "unknown")


def _observation_pb(obs: Observation) -> node_pb2.DomainObservation:
    return node_pb2.DomainObservation(
        instance_uuid=obs.instance_uuid,
        exists=obs.exists,
        power_state=obs.power_state,
        reason=obs.reason,
        console_port=obs.console_port,
        vdi_port=obs.vdi_port,
        vdi_tls_port=obs.vdi_tls_port,
    )


def report_to_pb(report: Report) -> node_pb2.NodeMessage:
    """A report for the wire."""
    if isinstance(report, Result):
        result = node_pb2.CommandResult(
            command_id=report.command_id,
            instance_uuid=report.instance_uuid,
            ok=report.ok,
            error=report.error,
            retryable=report.retryable,
            data=report.data,
            blob_uuid=report.blob_uuid,
        )
        if report.observation is not None:
            result.observation.CopyFrom(_observation_pb(report.observation))
        if report.agent_result is not None:
            json_format.ParseDict(report.agent_result, result.agent_result)
        return node_pb2.NodeMessage(result=result)
    if isinstance(report, AgentStatus):
        return node_pb2.NodeMessage(
            agent_status=node_pb2.AgentStatus(
                instance_uuid=report.instance_uuid,
                agent_state=report.agent_state,
                boot_time=report.boot_time,
            )
        )
    if isinstance(report, ExecOutput):
        return node_pb2.NodeMessage(
            exec_output=node_pb2.ExecOutput(
                command_id=report.command_id, stream=report.stream, data=report.data
            )
        )
    if isinstance(report, ConsoleRelay):
        return node_pb2.NodeMessage(
            console=node_pb2.ConsoleRelay(
                session_id=report.session_id,
                data=report.data,
                close=report.close,
                error=report.error,
            )
        )
    if isinstance(report, Observation):
        return node_pb2.NodeMessage(observation=_observation_pb(report))
    if isinstance(report, Inventory):
        return node_pb2.NodeMessage(
            inventory=node_pb2.Inventory(
                domains=[_observation_pb(d) for d in report.domains],
                networks=list(report.networks),
            )
        )
    event = common_pb2.Event(
        object_uuid=report.instance_uuid,
        type=report.type,
        message=report.message,
        timestamp=report.timestamp,
        duration=report.duration,
    )
    if report.extra:
        json_format.ParseDict(report.extra, event.extra)
    return node_pb2.NodeMessage(event=node_pb2.NodeEvent(event=event))


class Link:
    """Keeps one stream to the control plane alive and serves it."""

    def __init__(
        self,
        target: str,
        identity: Identity,
        executor: Executor,
        credentials: Credentials,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        on_connected: Callable[[list[Observation]], None] | None = None,
        on_disconnected: Callable[[], Awaitable[None]] | None = None,
        on_console: Callable[[ConsoleRelay], None] | None = None,
    ) -> None:
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_console = on_console
        self.credentials = credentials
        self.target = target
        self.identity = identity
        self.executor = executor
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.connected = asyncio.Event()
        self.connections = 0
        self._outbox: asyncio.Queue[node_pb2.NodeMessage] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, report: Report) -> None:
        """Queue a report; dropped while disconnected (the inventory covers it)."""
        outbox = self._outbox
        if outbox is not None and outbox.qsize() < OUTBOX_LIMIT:
            outbox.put_nowait(report_to_pb(report))

    def backlog(self) -> int:
        """Messages waiting to be sent (0 while disconnected)."""
        outbox = self._outbox
        return outbox.qsize() if outbox is not None else 0

    def emit(self, event: NodeEvent) -> None:
        """Queue an instance event (the executor's callback)."""
        self.send(event)

    async def run(self) -> None:
        """Dial and serve forever, redialling with backoff when the stream is lost."""
        attempt = 0
        while True:
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub: NodeServiceAsyncStub = node_pb2_grpc.NodeServiceStub(channel)
                    await self._serve(stub, await self.credentials.metadata(channel))
                attempt = 0
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.credentials.forget()
                log.warning(
                    "stream to control plane lost", code=exc.code().name, details=exc.details()
                )
            except Exception:
                log.exception("stream to control plane failed")
            finally:
                self.connected.clear()
                self._outbox = None
                if self.on_disconnected is not None:
                    await self.on_disconnected()
            delay = backoff(attempt, self.backoff_base, self.backoff_cap, self.rng)
            attempt += 1
            log.info("redialling control plane", delay=round(delay, 2), attempt=attempt)
            await self.sleep(delay)

    async def _serve(self, stub: NodeServiceAsyncStub, metadata: Metadata) -> None:
        outbox: asyncio.Queue[node_pb2.NodeMessage] = asyncio.Queue()
        ident = self.identity
        outbox.put_nowait(
            node_pb2.NodeMessage(
                register=node_pb2.Register(
                    name=ident.name,
                    address=ident.address,
                    cpus=ident.cpus,
                    memory_mb=ident.memory_mb,
                    hypervisor=ident.hypervisor,
                    agent_version=AGENT_VERSION,
                    console_host=ident.console_host,
                )
            )
        )
        call = stub.Connect(_drain(outbox), metadata=metadata)
        first = await call.read()
        if not isinstance(first, node_pb2.ControlMessage) or not first.HasField("registered"):
            raise ConnectionError("control plane did not acknowledge registration")
        self._outbox = outbox
        self.connections += 1
        inventory = await self.executor.inventory()
        networks = await self.executor.networks_present()
        outbox.put_nowait(report_to_pb(Inventory(tuple(inventory), tuple(networks))))
        if self.on_connected is not None:
            self.on_connected(inventory)
        self.connected.set()
        log.info("connected to control plane", target=self.target, domains=len(inventory))
        heartbeat = asyncio.create_task(
            self._heartbeat(outbox, first.registered.heartbeat_interval)
        )
        try:
            while isinstance(message := await call.read(), node_pb2.ControlMessage):
                batch = message.batch.messages if message.HasField("batch") else (message,)
                for one in batch:
                    if one.HasField("command"):
                        self._spawn(self._handle(command_from_pb(one.command)))
                    elif one.HasField("console") and self.on_console is not None:
                        c = one.console
                        self.on_console(ConsoleRelay(c.session_id, c.data, c.close, c.error))
        finally:
            heartbeat.cancel()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, command: Command) -> None:
        result = await self.executor.execute(command)
        self.send(result)

    async def _heartbeat(
        self, outbox: asyncio.Queue[node_pb2.NodeMessage], interval: float
    ) -> None:
        seq = 0
        while True:
            await self.sleep(interval or 5.0)
            seq += 1
            outbox.put_nowait(
                node_pb2.NodeMessage(heartbeat=node_pb2.Heartbeat(seq=seq, sent_at=self.clock()))
            )


async def _drain(
    outbox: asyncio.Queue[node_pb2.NodeMessage],
) -> AsyncIterator[node_pb2.NodeMessage]:
    while True:
        yield await outbox.get()
