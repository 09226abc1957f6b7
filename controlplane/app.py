"""The control plane's entry point and composition root.

Builds every piece once from the settings, serves the gRPC API (with health
checking and server reflection) and the node stream, and shuts down cleanly
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import logs
from controlplane.api.agent import AgentServicer
from controlplane.api.artifacts import ArtifactServicer
from controlplane.api.auth import AuthInterceptor, AuthServicer, NamespaceServicer
from controlplane.api.blobs import BlobServicer
from controlplane.api.consoles import ConsoleServicer
from controlplane.api.instances import InstanceServicer
from controlplane.api.metadata import MetadataServicer
from controlplane.api.networks import InterfaceServicer, NetworkServicer
from controlplane.api.node_stream import NodeServicer
from controlplane.api.uploads import UploadServicer
from controlplane.hub import Hub
from controlplane.nodes import NodeRegistry
from controlplane.reconciler import Reconciler
from controlplane.services.agent import AgentService
from controlplane.services.artifacts import ArtifactService
from controlplane.services.consoles import ConsoleService
from controlplane.services.events import EventPruner
from controlplane.services.instances import InstanceService
from controlplane.services.interfaces import InterfaceService
from controlplane.services.metadata import (
    ArtifactKind,
    BlobKind,
    InstanceKind,
    InterfaceKind,
    MetadataKind,
    MetadataService,
    NamespaceKind,
    NetworkKind,
)
from controlplane.services.namespaces import NamespaceService
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import NetworkService
from controlplane.services.uploads import UploadService
from controlplane.settings import Settings
from controlplane.store.agentops import AgentOperations
from controlplane.store.artifacts import Artifacts
from controlplane.store.blobs import BlobStore
from controlplane.store.namespaces import Namespaces
from controlplane.store.networks import NetworkRecords
from controlplane.store.protocol import Store
from controlplane.store.records import Records
from controlplane.store.rocks import RocksStore
from controlplane.store.uploads import Uploads
from protos import (
    agent_pb2,
    agent_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    consoles_pb2,
    consoles_pb2_grpc,
    instances_pb2,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
)
from protos.instances_pb2_grpc import add_InstanceServiceServicer_to_server

log = structlog.get_logger(__name__)


@dataclass
class ControlPlane:
    """A running control plane: its server, the port it listens on, its parts."""

    server: grpc.aio.Server
    port: int
    store: Store
    records: Records
    nodes: NodeRegistry
    service: InstanceService
    agent: AgentService
    namespaces: NamespaceService
    pruner: EventPruner
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving and background tasks, end node streams, close the store."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for session in list(self.nodes.sessions.values()):
            session.close()
        await self.server.stop(grace)
        await self.store.close()


async def start(
    settings: Settings, store: Store | None = None, clock: Callable[[], float] = time.time
) -> ControlPlane:
    """Build and start a control plane (RocksDB under data_dir unless a store is given)."""
    store = store if store is not None else RocksStore(settings.data_dir / "store")
    hub = Hub()
    records = Records(store, hub)
    nodes = NodeRegistry()
    nodes.load_usage(await records.list_instances())
    reconciler = Reconciler(records, nodes, settings.name, clock)
    blobs = BlobStore(store, settings.data_dir / "blobs")
    artifact_records = Artifacts(store)
    artifacts = ArtifactService(artifact_records, blobs, clock)
    network_records = NetworkRecords(store)
    networks = NetworkService(
        records,
        network_records,
        reconciler.event,
        clock,
        settings.floating_netblock,
        settings.network_node,
    )
    netsync = NetworkSync(networks, records, nodes)
    reconciler.hooks = netsync
    service = InstanceService(
        settings, records, nodes, reconciler, hub, artifacts, networks, netsync
    )
    interfaces = InterfaceService(service, networks, netsync, nodes, settings.command_timeout)
    agent = AgentService(records, AgentOperations(store), blobs, nodes, clock)
    uploads = UploadService(
        Uploads(store, settings.data_dir / "uploads"), artifacts, settings.name, clock
    )
    await agent.recover()
    namespaces = NamespaceService(Namespaces(store), clock, settings.token_ttl)
    await namespaces.start(settings.system_key, settings.data_dir / "system-key")
    kinds: dict[str, MetadataKind] = {
        "instance": InstanceKind(records),
        "blob": BlobKind(blobs, records),
        "artifact": ArtifactKind(artifact_records, records),
        "namespace": NamespaceKind(namespaces, records),
        "network": NetworkKind(network_records, records),
        "interface": InterfaceKind(network_records, records),
    }
    metadata = MetadataService(kinds, reconciler.event)

    server = grpc.aio.server(
        interceptors=[AuthInterceptor(namespaces)],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(namespaces), server)
    auth_pb2_grpc.add_NamespaceServiceServicer_to_server(
        NamespaceServicer(namespaces, service), server
    )
    add_InstanceServiceServicer_to_server(InstanceServicer(service), server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(
        NodeServicer(settings, nodes, reconciler, records, clock, agent), server
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent, service), server)
    blobs_pb2_grpc.add_BlobServiceServicer_to_server(BlobServicer(blobs, clock), server)
    artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(artifacts), server)
    uploads_pb2_grpc.add_UploadServiceServicer_to_server(UploadServicer(uploads), server)
    consoles = ConsoleService(
        records, nodes, blobs, settings.name, clock, timeout=settings.command_timeout
    )
    consoles_pb2_grpc.add_ConsoleServiceServicer_to_server(
        ConsoleServicer(consoles, service), server
    )
    metadata_pb2_grpc.add_MetadataServiceServicer_to_server(MetadataServicer(metadata), server)
    networks_pb2_grpc.add_NetworkServiceServicer_to_server(
        NetworkServicer(networks, netsync), server
    )
    networks_pb2_grpc.add_InterfaceServiceServicer_to_server(InterfaceServicer(interfaces), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        instances_pb2.DESCRIPTOR.services_by_name["InstanceService"].full_name,
        node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
        agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
        blobs_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
        artifacts_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
        uploads_pb2.DESCRIPTOR.services_by_name["UploadService"].full_name,
        consoles_pb2.DESCRIPTOR.services_by_name["ConsoleService"].full_name,
        auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
        auth_pb2.DESCRIPTOR.services_by_name["NamespaceService"].full_name,
        metadata_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name,
        networks_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name,
        networks_pb2.DESCRIPTOR.services_by_name["InterfaceService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", *names[:-2]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    pruner = EventPruner(
        records, settings.retention_days(), settings.event_prune_interval, clock, settings.name
    )
    tasks = [asyncio.get_running_loop().create_task(pruner.run())]
    log.info("control plane serving", listen=settings.listen, port=port)
    return ControlPlane(
        server, port, store, records, nodes, service, agent, namespaces, pruner, tasks
    )


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    plane = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await plane.stop()


def main() -> None:
    """Console script: minicloud-controlplane."""
    settings = Settings.from_env()
    logs.configure(json=settings.log_json)
    asyncio.run(run(settings))
