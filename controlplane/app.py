"""The control plane's entry point and composition root.

``build`` wires every part once from the settings (loading what the store
holds) and registers the gRPC services, listening on nothing; ``serve``
binds the port and starts serving and the background tasks; ``stop`` ends
them all. ``SERVICES`` is the one table of gRPC services: it drives both
registration and the names health checking and server reflection report.
Every background task is started through the plane's one ``Tasks`` owner,
so stopping cancels and awaits all of them. ``run`` serves until a stop
event, ``main`` until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common import logs, pki
from common.metricsserver import MetricsServer, enabled
from common.tasks import Tasks
from common.tlsfiles import Material
from controlplane import gauges, signingkeys
from controlplane.api import reflection
from controlplane.api.agent import AgentServicer
from controlplane.api.artifacts import ArtifactServicer
from controlplane.api.auth import AuthInterceptor, AuthServicer, NamespaceServicer, ProxyTrust
from controlplane.api.blobs import BlobServicer
from controlplane.api.consoles import ConsoleServicer
from controlplane.api.instances import InstanceServicer
from controlplane.api.metadata import MetadataServicer
from controlplane.api.metering import MetricsInterceptor
from controlplane.api.networks import InterfaceServicer, NetworkServicer
from controlplane.api.node_stream import NodeServicer
from controlplane.api.nodeauth import NodeCertInterceptor
from controlplane.api.nodes import NodeAdminServicer
from controlplane.api.uploads import UploadServicer
from controlplane.changefeed import Changefeed
from controlplane.hub import Hub
from controlplane.leadership import Leadership, Work
from controlplane.loginguard import LoginGuard
from controlplane.metrics import PlaneMetrics
from controlplane.nodequeue import CommandQueue
from controlplane.nodes import NodeRegistry
from controlplane.presence import Presence
from controlplane.reconciler import Reconciler
from controlplane.replica import ReplicaLease
from controlplane.services.agent import AgentService
from controlplane.services.artifacts import ArtifactService
from controlplane.services.blobs import BlobService
from controlplane.services.certificates import CertificateService
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
    NodeKind,
)
from controlplane.services.moves import MoveService
from controlplane.services.namespaces import NamespaceService
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import NetworkService
from controlplane.services.nodes import NodeService
from controlplane.services.readiness import Readiness
from controlplane.services.snapshots import SnapshotService
from controlplane.services.uploads import UploadService
from controlplane.services.urlcache import UrlCache, cluster_networks
from controlplane.settings import Settings
from controlplane.store.agentops import AgentOperations
from controlplane.store.artifacts import Artifacts
from controlplane.store.blobs import BlobStore
from controlplane.store.cluster import ClusterMismatch, cluster_identity
from controlplane.store.etcd import EtcdStore, EtcdTls
from controlplane.store.local import LocalCoordination, coordinated
from controlplane.store.namespaces import Namespaces
from controlplane.store.networks import NetworkRecords
from controlplane.store.protocol import Coordinated, Store, StoreError
from controlplane.store.records import Records
from controlplane.store.revocations import Revocations
from controlplane.store.rocks import RocksStore
from controlplane.store.timed import TimedStore
from controlplane.store.uploads import Uploads
from controlplane.urlfetch import FetchPolicy
from controlplane.usage import SharedUsage
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
    instances_pb2_grpc,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
)

log = structlog.get_logger(__name__)

OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # The listener owns its address: a second server on the same port is an
    # error at start, not a silent split of the clients between two servers.
    ("grpc.so_reuseport", 0),
]


@dataclass
class Parts:
    """Every part of a control plane, wired together."""

    settings: Settings
    clock: Callable[[], float]
    tasks: Tasks
    metrics: PlaneMetrics
    store: Coordinated
    hub: Hub
    records: Records
    nodes: NodeRegistry
    reconciler: Reconciler
    blobs: BlobStore
    blob_service: BlobService
    artifacts: ArtifactService
    networks: NetworkService
    netsync: NetworkSync
    service: InstanceService
    interfaces: InterfaceService
    agent: AgentService
    uploads: UploadService
    namespaces: NamespaceService
    metadata: MetadataService
    consoles: ConsoleService
    pruner: EventPruner
    node_service: NodeService
    moves: MoveService
    snapshots: SnapshotService
    certificates: CertificateService
    cluster_id: str
    urls: UrlCache
    # This replica's lease in the store (granted once serving): leadership is tied to it.
    replica: ReplicaLease
    # The cluster's CA certificate with TLS (b"" without): gateway certificates' issuer.
    ca: bytes = b""


# Where a service is served when the plane runs TLS: on the public listener, on the
# node listener (node certificates only), or on both. Without TLS there is one listener.
PUBLIC, NODE, BOTH = "public", "node", "both"


@dataclass(frozen=True)
class Service:
    """One gRPC service: how to make its servicer, how to register it, its full name,
    and which listener serves it under TLS."""

    make: Callable[[Parts], Any]
    add: Callable[[Any, grpc.aio.Server], None]
    name: str
    where: str = PUBLIC


def _name(module: Any, service: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[service].full_name)


SERVICES: tuple[Service, ...] = (
    Service(
        lambda p: InstanceServicer(p.service, p.moves, p.snapshots),
        instances_pb2_grpc.add_InstanceServiceServicer_to_server,
        _name(instances_pb2, "InstanceService"),
    ),
    Service(
        lambda p: NodeServicer(
            p.settings,
            p.nodes,
            p.reconciler,
            p.records,
            p.clock,
            p.agent,
            p.node_service,
            p.certificates,
            p.cluster_id,
        ),
        node_pb2_grpc.add_NodeServiceServicer_to_server,
        _name(node_pb2, "NodeService"),
        NODE,
    ),
    Service(
        lambda p: AgentServicer(p.agent, p.service),
        agent_pb2_grpc.add_AgentServiceServicer_to_server,
        _name(agent_pb2, "AgentService"),
    ),
    Service(
        lambda p: BlobServicer(p.blob_service, p.clock),
        blobs_pb2_grpc.add_BlobServiceServicer_to_server,
        _name(blobs_pb2, "BlobService"),
        BOTH,
    ),
    Service(
        lambda p: ArtifactServicer(p.artifacts, p.urls),
        artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server,
        _name(artifacts_pb2, "ArtifactService"),
    ),
    Service(
        lambda p: UploadServicer(p.uploads),
        uploads_pb2_grpc.add_UploadServiceServicer_to_server,
        _name(uploads_pb2, "UploadService"),
    ),
    Service(
        lambda p: ConsoleServicer(p.consoles, p.service),
        consoles_pb2_grpc.add_ConsoleServiceServicer_to_server,
        _name(consoles_pb2, "ConsoleService"),
    ),
    Service(
        lambda p: AuthServicer(
            p.namespaces,
            p.settings.trusted_proxies,
            ProxyTrust(p.ca, p.certificates, p.clock) if p.ca else None,
        ),
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
        _name(auth_pb2, "AuthService"),
    ),
    Service(
        lambda p: NamespaceServicer(p.namespaces, p.service),
        auth_pb2_grpc.add_NamespaceServiceServicer_to_server,
        _name(auth_pb2, "NamespaceService"),
    ),
    Service(
        lambda p: MetadataServicer(p.metadata),
        metadata_pb2_grpc.add_MetadataServiceServicer_to_server,
        _name(metadata_pb2, "MetadataService"),
    ),
    Service(
        lambda p: NetworkServicer(p.networks, p.netsync),
        networks_pb2_grpc.add_NetworkServiceServicer_to_server,
        _name(networks_pb2, "NetworkService"),
    ),
    Service(
        lambda p: InterfaceServicer(p.interfaces),
        networks_pb2_grpc.add_InterfaceServiceServicer_to_server,
        _name(networks_pb2, "InterfaceService"),
    ),
    Service(
        lambda p: NodeAdminServicer(p.node_service, p.certificates),
        nodes_pb2_grpc.add_NodeAdminServiceServicer_to_server,
        _name(nodes_pb2, "NodeAdminService"),
    ),
)

# What server reflection lists: the table's services, health checking, reflection itself.
REFLECTED: tuple[str, ...] = (
    *(s.name for s in SERVICES),
    health.SERVICE_NAME,
    reflection.ALPHA_SERVICE_NAME,
    reflection.V1_SERVICE_NAME,
)


class ControlPlane:
    """A control plane: its parts, its gRPC servers and (once serving) their ports.

    With TLS there are two servers: the public one (every service but the node
    stream) and the node listener (the node stream and blobs, for node
    certificates only). Without TLS the public server serves everything.
    """

    def __init__(
        self,
        parts: Parts,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        node_server: grpc.aio.Server | None = None,
        tls: Material | None = None,
    ) -> None:
        self.parts = parts
        self.server = server
        self.node_server = node_server
        self.tls = tls
        self.health = health_servicer
        self.port = 0
        self.node_port = 0
        self.tasks = parts.tasks
        listen = parts.settings.metrics_listen
        tls_metrics = parts.settings.metrics_tls
        self.metrics = (
            MetricsServer(parts.metrics.registry, listen, tls=tls_metrics)
            if enabled(listen)
            else None
        )
        # Shortcuts for tests and tools.
        self.store, self.records, self.nodes = parts.store, parts.records, parts.nodes
        self.service, self.agent, self.namespaces = parts.service, parts.agent, parts.namespaces
        self.pruner = parts.pruner
        self.node_service = parts.node_service
        self.moves = parts.moves
        self.certificates = parts.certificates
        self.leadership = Leadership(
            parts.store,
            parts.replica,
            parts.settings.name,
            leader_work(parts),
            on_change=lambda leading: parts.metrics.leader.set(1 if leading else 0),
        )
        self.changefeed = Changefeed(parts.store, parts.hub)

    def _bind(self, server: grpc.aio.Server, listen: str, creds: Any) -> int:
        try:
            if creds is None:
                port = server.add_insecure_port(listen)
            else:
                port = server.add_secure_port(listen, creds)
        except RuntimeError as exc:  # grpc's "Failed to bind": the address is taken
            raise OSError(f"cannot listen on {listen}: the address is in use") from exc
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        return int(port)

    async def serve(self) -> None:
        """Listen on the configured addresses, report SERVING, start the background tasks."""
        settings = self.parts.settings
        listen = settings.listen
        if self.tls is None:
            log.warning(
                "serving without TLS: keys, tokens and the node stream cross the network "
                "in the clear (MINICLOUD_PLAINTEXT)",
                listen=listen,
            )
            self.port = self._bind(self.server, listen, None)
        else:
            public = grpc.ssl_server_credentials([(self.tls.key, self.tls.cert)])
            self.port = self._bind(self.server, listen, public)
        if self.node_server is not None:
            assert self.tls is not None  # the node listener exists only with TLS
            nodes = grpc.ssl_server_credentials(
                [(self.tls.key, self.tls.cert)],
                root_certificates=self.tls.ca,
                require_client_auth=True,
            )
            self.node_port = self._bind(self.node_server, settings.node_listen, nodes)
        if self.metrics is not None:
            await self.metrics.start()  # before serving: a taken metrics port stops the start
        await self.changefeed.start()  # Watch streams see every commit from here on
        self.tasks.spawn(self.changefeed.run(), name="changefeed")
        await self.server.start()
        if self.node_server is not None:
            await self.node_server.start()
        await self.set_health(True)
        # Every replica: its lease, its campaign for leadership (the leader runs
        # leader_work), the revocations its own listeners enforce, its readiness.
        self.tasks.spawn(self.parts.replica.run(), name="replica lease")
        self.tasks.spawn(self.leadership.run(), name="leadership")
        self.tasks.spawn(self.parts.certificates.run(), name="revocations")
        self.tasks.spawn(self.nodes.run(self.store), name="other replicas' nodes")
        readiness = Readiness(
            self.store, self.set_health, settings.health_interval, settings.health_timeout
        )
        self.tasks.spawn(readiness.run(), name="store readiness")
        log.info(
            "control plane serving",
            listen=listen,
            port=self.port,
            tls=self.tls is not None,
            node_port=self.node_port or self.port,
            cluster=self.parts.cluster_id,
        )

    async def set_health(self, serving: bool) -> None:
        """Report every service (and the server as a whole) SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *(s.name for s in SERVICES)):
            await self.health.set(name, status)

    async def stop(self, grace: float = 2.0) -> None:
        """End node streams, stop serving, stop every background task, close the store."""
        self.node_service.stopping = True
        for session in list(self.nodes.sessions.values()):
            session.close()
        await self.server.stop(grace)
        if self.node_server is not None:
            await self.node_server.stop(grace)
        if self.port:
            # gRPC closes its listening socket after stop returns; a restart on the
            # same port must not race it.
            await released(self.parts.settings.listen, self.port)
        if self.node_port:
            await released(self.parts.settings.node_listen, self.node_port)
        await self.tasks.stop()
        await self.parts.replica.close()  # the leader key goes now, not a lease ttl later
        if self.metrics is not None:
            await self.metrics.stop()
        await self.store.close()

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on (0 when it is not served)."""
        return self.metrics.port if self.metrics is not None else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until stop is set, then shut down."""
        await self.serve()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()


def leader_work(parts: Parts) -> list[Work]:
    """What must run once in the cluster: on the leader only (controlplane/leadership.py).

    The reconciler and network sync act on requests and node reports in the
    replica that has them; what runs on a timer over the whole store is here.
    """
    return [
        ("event pruner", parts.pruner.run),
        ("missing nodes", parts.node_service.run),
        ("blob sweep", parts.blob_service.run),
    ]


def open_store(settings: Settings) -> Coordinated:
    """The store MINICLOUD_STORE names: RocksDB (the default, under data_dir) or etcd.

    RocksDB is one process's, so its watches and leases are in-process
    (store/local.py); etcd coordinates every control plane on it.
    """
    where = settings.store_location()
    if where.kind == "etcd":
        files = (settings.etcd_ca, settings.etcd_cert, settings.etcd_key)
        tls = None
        if where.tls or any(files):
            ca, cert, key = (Path(f) if f else None for f in files)
            tls = EtcdTls(ca=ca, cert=cert, key=key)
        log.info(
            "store: etcd",
            endpoints=list(where.endpoints),
            prefix=settings.etcd_prefix,
            tls=tls is not None,
        )
        return EtcdStore(
            where.endpoints,
            settings.etcd_prefix.encode(),
            tls=tls,
            timeout=settings.etcd_timeout,
        )
    assert where.path is not None
    log.info("store: rocksdb", path=str(where.path))
    return LocalCoordination(RocksStore(where.path))


async def build(
    settings: Settings, store: Store | None = None, clock: Callable[[], float] = time.time
) -> ControlPlane:
    """Wire a control plane (on the store settings name unless one is given), not yet serving."""
    # First: a key file that cannot be used stops the start before anything is opened.
    signing_key, keyring = signingkeys.load(settings.signing_key_path(), settings.token_public_keys)
    metrics = PlaneMetrics()
    material = settings.tls.read() if settings.tls is not None else None
    store = TimedStore(coordinated(store) if store is not None else open_store(settings), metrics)
    tasks = Tasks()
    hub = Hub()
    records = Records(store)
    replica = ReplicaLease(store, settings.leader_ttl, settings.name)
    nodes = NodeRegistry(
        metrics, tasks, SharedUsage(store), Presence(store, replica, clock), CommandQueue(store)
    )
    replica.on_renewed = nodes.rerecord
    await nodes.load(store, records)
    reconciler = Reconciler(records, nodes, settings.name, clock, tasks)
    blobs = BlobStore(store, settings.data_dir / "blobs", metrics)
    artifact_records = Artifacts(store, settings.artifact_max_versions)
    blob_service = BlobService(
        blobs, records, artifact_records, reconciler.event, settings.blob_sweep_interval
    )
    namespaces = NamespaceService(
        Namespaces(store),
        clock,
        settings.token_ttl,
        guard=LoginGuard(settings.login_policy()),
        concurrency=settings.login_concurrency,
        queue=settings.login_queue,
        signing_key=signing_key,
        keyring=keyring,
        skew=settings.token_clock_skew,
    )
    artifacts = ArtifactService(
        artifact_records, blob_service, records, reconciler.event, clock, namespaces.trusted_by
    )
    network_records = NetworkRecords(store)
    urls = UrlCache(
        artifacts,
        FetchPolicy(
            max_bytes=settings.artifact_fetch_max_bytes,
            allow=tuple(ipaddress.ip_network(n) for n in settings.artifact_fetch_allow),
            deny=tuple(ipaddress.ip_network(n) for n in settings.artifact_fetch_deny),
        ),
        settings.artifact_fetch_timeout,
        tasks,
        settings.name,
        cluster_networks(settings.floating_netblock, network_records, records),
    )
    await urls.recover()
    networks = NetworkService(
        records,
        network_records,
        reconciler.event,
        clock,
        settings.floating_netblock,
        settings.network_node,
        dns_zone=settings.dns_zone,
        dns_upstream=settings.dns_upstream,
    )
    netsync = NetworkSync(networks, records, nodes)
    reconciler.hooks = netsync
    service = InstanceService(
        settings, records, nodes, reconciler, hub, artifacts, networks, netsync
    )
    interfaces = InterfaceService(service, networks, netsync, nodes, settings.command_timeout)
    agent = AgentService(
        records, AgentOperations(store), blobs, nodes, clock, tasks, metrics=metrics
    )
    gauges.register(
        metrics, records, nodes, clock, agent.executing, settings.metrics_instance_cache
    )
    uploads = UploadService(
        Uploads(store, settings.data_dir / "uploads"), artifacts, settings.name, clock
    )
    await agent.recover()
    await namespaces.start(settings.system_key, settings.data_dir / "system-key")
    moves = MoveService(settings, records, nodes, reconciler, blobs, networks, netsync)
    node_service = NodeService(
        records, nodes, reconciler, clock, settings.node_missing_after, settings.name, moves=moves
    )
    nodes.on_lost = node_service.lost
    await node_service.load()
    kinds: dict[str, MetadataKind] = {
        "instance": InstanceKind(records),
        "blob": BlobKind(blobs, records),
        "artifact": ArtifactKind(artifact_records, records, namespaces.trusted_by),
        "namespace": NamespaceKind(namespaces, records),
        "network": NetworkKind(network_records, records),
        "interface": InterfaceKind(network_records, records),
        "node": NodeKind(records),
    }
    parts = Parts(
        settings=settings,
        clock=clock,
        tasks=tasks,
        metrics=metrics,
        store=store,
        hub=hub,
        records=records,
        nodes=nodes,
        reconciler=reconciler,
        blobs=blobs,
        blob_service=blob_service,
        artifacts=artifacts,
        networks=networks,
        netsync=netsync,
        service=service,
        interfaces=interfaces,
        agent=agent,
        uploads=uploads,
        namespaces=namespaces,
        metadata=MetadataService(kinds, reconciler.event),
        consoles=ConsoleService(
            records, nodes, blobs, settings.name, clock, timeout=settings.command_timeout
        ),
        pruner=EventPruner(
            records, settings.retention_days(), settings.event_prune_interval, clock, settings.name
        ),
        node_service=node_service,
        moves=moves,
        snapshots=SnapshotService(records, service, artifacts, nodes, reconciler),
        certificates=CertificateService(
            Revocations(store), nodes, clock, settings.revocation_interval
        ),
        urls=urls,
        cluster_id=await cluster_identity(
            store, pki.info(material.ca).cluster_id if material else ""
        ),
        replica=replica,
        ca=material.ca if material else b"",
    )
    server = grpc.aio.server(
        # Metering first: it counts what authentication refuses too.
        interceptors=[MetricsInterceptor(metrics), AuthInterceptor(namespaces)],
        options=OPTIONS,
    )
    node_server = None
    if material is not None:
        node_server = grpc.aio.server(
            interceptors=[
                MetricsInterceptor(metrics),
                NodeCertInterceptor(material.ca, parts.certificates),
            ],
            options=OPTIONS,
        )
    for entry in SERVICES:
        servicer = entry.make(parts)
        if node_server is None or entry.where in (PUBLIC, BOTH):
            entry.add(servicer, server)
        if node_server is not None and entry.where in (NODE, BOTH):
            entry.add(servicer, node_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(REFLECTED, server)
    return ControlPlane(parts, server, health_servicer, node_server, material)


async def released(listen: str, port: int, timeout: float = 5.0) -> None:
    """Wait (up to timeout) until nothing listens on the listen address's host at port."""
    host = listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError:
                pass
        await asyncio.sleep(0.02)
    log.warning("listening address still busy after stop", listen=listen, port=port)


async def start(
    settings: Settings, store: Store | None = None, clock: Callable[[], float] = time.time
) -> ControlPlane:
    """Build a control plane and serve it (stop it with ``stop``)."""
    plane = await build(settings, store, clock)
    await plane.serve()
    return plane


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plane = await build(settings)
    await plane.run(stop)


def main() -> None:
    """Console script: minicloud-controlplane."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        logs.configure()
        log.error("cannot start the control plane", error=str(exc))
        raise SystemExit(1) from None
    logs.configure(json=settings.log_json)
    try:
        asyncio.run(run(settings))
    except (OSError, StoreError, ClusterMismatch) as exc:
        log.error("cannot start the control plane", error=str(exc))
        raise SystemExit(1) from None
