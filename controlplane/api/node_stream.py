"""The NodeService stream: one per node agent, translated to registry calls.

The first message must be ``register``, of this control plane's wire
version (a node agent of another version is refused with FAILED_PRECONDITION);
then the node's inventory follows. On the node listener (TLS) a node agent
may only register as the node its certificate names (PERMISSION_DENIED
otherwise).
Reads and writes run as two tasks; when either ends (or the node stays
silent past the timeout) the session is closed and pending commands fail.
Each stream is recorded for the other replicas while it lasts (``announce``,
``withdraw``): they send this node's commands through the store, and this
replica delivers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, assert_never

import grpc
import structlog

from common import logs
from common.nodewire.agentstate import is_ready
from common.nodewire.convert import WireError, control_to_pb, register_from_pb, report_from_pb
from common.nodewire.messages import (
    WIRE_VERSION,
    AgentStatus,
    ConsoleRelay,
    ExecOutput,
    Heartbeat,
    Inventory,
    NodeEvent,
    Observation,
    Result,
)
from controlplane.api.nodeauth import NODE_IDENTITY
from controlplane.model import Event, Node
from controlplane.nodes import NodeRegistry, Session
from controlplane.reconciler import Reconciler
from controlplane.services.agent import AgentService
from controlplane.services.certificates import CertificateService
from controlplane.services.nodes import NodeService
from controlplane.settings import Settings
from controlplane.store.records import Records
from protos import node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
BATCH_LIMIT = 256


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    """Holds node agents' streams."""

    def __init__(
        self,
        settings: Settings,
        nodes: NodeRegistry,
        reconciler: Reconciler,
        records: Records,
        clock: Callable[[], float],
        agent: AgentService,
        node_service: NodeService,
        certificates: CertificateService | None = None,
        cluster_id: str = "",
    ) -> None:
        self.cluster_id = cluster_id
        self.certificates = certificates
        self.node_service = node_service
        self.agent = agent
        self.settings = settings
        self.nodes = nodes
        self.reconciler = reconciler
        self.records = records
        self.clock = clock

    async def Connect(
        self, request_iterator: AsyncIterator[node_pb2.NodeMessage], context: Context
    ) -> AsyncIterator[node_pb2.ControlMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be register")
            return
        reg = register_from_pb(first.register)
        if reg.wire_version != WIRE_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node agent {reg.name!r} speaks node wire version {reg.wire_version}; "
                f"this control plane speaks version {WIRE_VERSION}: upgrade the node agent",
            )
            return
        if not reg.name or reg.cpus <= 0 or reg.memory_mb <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "register needs a name, cpus and memory_mb"
            )
            return
        identity = NODE_IDENTITY.get()
        if identity is not None and identity.name != reg.name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is node {identity.name!r}'s: "
                f"it may not register as node {reg.name!r}",
            )
            return
        node = Node(
            name=reg.name,
            address=reg.address,
            cpus=reg.cpus,
            memory_mb=reg.memory_mb,
            hypervisor=reg.hypervisor,
            agent_version=reg.agent_version,
            last_seen=self.clock(),
            console_host=reg.console_host or reg.address,
            qemu_version=reg.qemu_version,
            libvirt_version=reg.libvirt_version,
            disk_gb=reg.disk_gb,
        )
        node = await self.node_service.connected(node)
        session = self.nodes.connect(node, self.clock())
        # The other replicas see it connected here; commands they queued for it come now.
        await self.nodes.announce(session)
        if identity is not None and self.certificates is not None:
            self.certificates.opened(node.name, identity.serial)
        logs.bind(node=node.name)
        log.info("node connected", node=node.name, hypervisor=node.hypervisor)
        reader = asyncio.create_task(self._read(session, request_iterator))
        watchdog = asyncio.create_task(self._watchdog(session))
        try:
            yield node_pb2.ControlMessage(
                registered=node_pb2.Registered(
                    heartbeat_interval=self.settings.heartbeat_interval, cluster_id=self.cluster_id
                )
            )
            while (command := await session.outbox.get()) is not None:
                if session.outbox.empty():
                    yield control_to_pb(command)
                    continue
                batch = node_pb2.ControlBatch(messages=[control_to_pb(command)])
                ending = False
                while not session.outbox.empty() and len(batch.messages) < BATCH_LIMIT:
                    more = session.outbox.get_nowait()
                    if more is None:
                        ending = True
                        break
                    batch.messages.append(control_to_pb(more))
                yield node_pb2.ControlMessage(batch=batch)
                if ending:
                    break
        finally:
            reader.cancel()
            watchdog.cancel()
            current = self.nodes.disconnect(session)
            await self.nodes.withdraw(session)
            if current:
                try:
                    await self.node_service.disconnected(node.name)
                except Exception:
                    log.exception("cannot record a node's disconnection", node=node.name)
            log.info("node disconnected", node=node.name)

    async def _read(self, session: Session, messages: AsyncIterator[node_pb2.NodeMessage]) -> None:
        try:
            async for message in messages:
                session.last_seen = self.clock()
                batch = message.batch.messages if message.HasField("batch") else (message,)
                for one in batch:
                    try:
                        await self._dispatch(session, one)
                    except Exception:
                        log.exception("cannot handle node message", node=session.node.name)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("node stream failed", node=session.node.name)
        finally:
            session.close()

    async def _dispatch(self, session: Session, message: node_pb2.NodeMessage) -> None:
        try:
            report = report_from_pb(message)
        except WireError as exc:
            log.warning("unexpected node message", node=session.node.name, error=str(exc))
            return
        match report:
            case Heartbeat():
                session.heartbeats += 1
            case Result():
                await self.reconciler.on_result(session, report)
            case Observation():
                await self.reconciler.on_observation(session, report)
            case Inventory():
                await self.reconciler.on_inventory(
                    session, list(report.domains), list(report.networks)
                )
            case NodeEvent():
                await self.reconciler.on_node_event(session, event_of(report))
            case ExecOutput():
                self.agent.on_output(report.command_id, report.stream, report.data)
            case ConsoleRelay():
                self.nodes.console_output(report)
            case AgentStatus():
                await self.reconciler.on_agent_status(
                    session, report.instance_uuid, report.agent_state, report.boot_time
                )
                if is_ready(report.agent_state):
                    self.agent.kick(report.instance_uuid)
            case _:
                assert_never(report)

    async def _watchdog(self, session: Session) -> None:
        timeout = self.settings.node_timeout
        while True:
            await asyncio.sleep(timeout / 4)
            if self.clock() - session.last_seen > timeout:
                log.warning("node silent too long; closing its stream", node=session.node.name)
                session.close()
                return


def event_of(event: NodeEvent) -> Event:
    """A node's event as the control plane logs it."""
    return Event(
        object_uuid=event.instance_uuid,
        type=event.type,
        message=event.message,
        timestamp=event.timestamp,
        fqdn=event.fqdn,
        duration=event.duration,
        extra=dict(event.extra),
    )
