"""The node agent's composition root and entry point: built in one place, run by one owner.

``build`` wires every part over the drivers it is given (``main`` picks
libvirt or the fakes from the settings; component tests and benchmarks pass
fakes): one ``Outbox`` that every part sends its reports to and the
``ControlStream`` drains, the executor, the guest watch (which owns the guest
links), guest operations and consoles. Nothing runs until
``NodeAgent.run(stop)``: it serves its metrics listener (``/metrics``,
``/healthz``, ``/readyz``), owns one TaskGroup (the stream, the observer,
the usage reporter), ends it when ``stop`` is set, and closes the links, the
blob channel and the hypervisor. Stopping the agent never stops guests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from common import logs
from common.metricsserver import MetricsServer, enabled
from nodeagent.blobclient import GrpcBlobs
from nodeagent.consoles import Consoles
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskBuilder
from nodeagent.errors import FatalError, NodeAgentError
from nodeagent.executor import Executor
from nodeagent.guest.links import LinkSettings
from nodeagent.guest.ops import GuestOps
from nodeagent.guest.watch import GuestWatch
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import Hypervisor
from nodeagent.membership import Membership
from nodeagent.metrics import NodeMetrics
from nodeagent.network.protocol import NetworkDriver
from nodeagent.observer import observe
from nodeagent.outbox import Outbox
from nodeagent.readiness import Readiness
from nodeagent.settings import Settings
from nodeagent.stream import ControlStream, Identity
from nodeagent.usage import report_usage

log = structlog.get_logger(__name__)


def machine_memory_mb() -> int:
    """Physical memory of this machine in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def build_drivers(
    settings: Settings, blobs: GrpcBlobs, metrics: NodeMetrics | None = None
) -> tuple[Hypervisor, DiskBuilder]:
    """The hypervisor driver and disk builder the settings ask for."""
    if settings.hypervisor == "fake":
        return FakeHypervisor(settings.vdi_listen), FakeDiskBuilder()
    from nodeagent.disks.qcow2 import Qcow2DiskBuilder
    from nodeagent.hypervisor.libvirt_driver import LibvirtHypervisor

    hypervisor = LibvirtHypervisor(
        uri=settings.libvirt_uri,
        domain_type=settings.domain_type,
        sockets_dir=settings.instances_dir,
        vdi_listen=settings.vdi_listen,
        vdi_tls=settings.vdi_tls,
        node_name=settings.name,
        metrics=metrics,
    )
    disks = Qcow2DiskBuilder(
        settings.instances_dir, settings.image_cache_dir, settings.image_url_template, blobs
    )
    return hypervisor, disks


def build_network(settings: Settings) -> NetworkDriver:
    """The network driver the settings ask for: the fake with the fake hypervisor."""
    if settings.hypervisor == "fake":
        from nodeagent.network.fake import FakeNetworkDriver

        return FakeNetworkDriver(settings.network_name_prefix)
    from nodeagent.network.linux import LinuxNetworkDriver, LinuxNetworkSettings

    return LinuxNetworkDriver(LinuxNetworkSettings.from_node(settings))


@dataclass
class NodeAgent:
    """The node agent's long-lived parts, wired; ``run`` serves until told to stop."""

    settings: Settings
    hypervisor: Hypervisor
    blobs: GrpcBlobs
    outbox: Outbox
    stream: ControlStream
    executor: Executor
    watch: GuestWatch
    guestops: GuestOps
    consoles: Consoles
    metrics: NodeMetrics
    # /metrics, /healthz and /readyz (None when the settings turn it off).
    metrics_server: MetricsServer | None = None

    async def _learn_versions(self) -> None:
        """Put the host's QEMU and libvirt versions into what the node registers with."""
        try:
            found = await self.hypervisor.versions()
        except NodeAgentError as exc:
            log.warning("cannot read the hypervisor's versions", error=str(exc))
            return
        self.stream.identity = dataclasses.replace(
            self.stream.identity,
            qemu_version=found.get("qemu", ""),
            libvirt_version=found.get("libvirt", ""),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve metrics; run the stream, the observer and the usage reporter until stop is set.

        A taken metrics address raises OSError before anything else starts.
        """
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except OSError:
                await self.blobs.close()
                await self.hypervisor.close()
                raise
        try:
            await self._learn_versions()
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.stream.run(), name="control-stream"),
                    group.create_task(
                        observe(self.hypervisor, self.outbox.send, self.watch), name="observer"
                    ),
                    group.create_task(
                        report_usage(
                            self.hypervisor, self.outbox.send, self.settings.usage_interval
                        ),
                        name="usage",
                    ),
                ]
                await stop.wait()
                log.info("node agent stopping; guests keep running", name=self.settings.name)
                for task in tasks:
                    task.cancel()
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await self.consoles.close_all()
            await self.watch.close()
            await self.blobs.close()
            await self.hypervisor.close()

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on (0 when not serving)."""
        return self.metrics_server.port if self.metrics_server is not None else 0


def disk_gb(folder: Path) -> int:
    """The size of the file system holding folder, in GB (0 if it cannot be read)."""
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).total // 10**9
    except OSError:
        return 0


def build(
    settings: Settings,
    hypervisor: Hypervisor,
    disks: DiskBuilder,
    blobs: GrpcBlobs,
    network: NetworkDriver | None = None,
    *,
    links: LinkSettings | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    metrics: NodeMetrics | None = None,
) -> NodeAgent:
    """Every part of a node agent over these drivers, wired; nothing runs yet.

    metrics is the registry the drivers were given (a fresh one when None).
    """
    metrics = metrics if metrics is not None else NodeMetrics()
    identity = Identity(
        name=settings.name,
        address=settings.address,
        cpus=settings.cpus or os.cpu_count() or 1,
        memory_mb=settings.memory_mb or machine_memory_mb(),
        hypervisor=hypervisor.kind,
        console_host=settings.console_host,
        disk_gb=disk_gb(settings.data_dir),
    )
    outbox = Outbox()
    watch = GuestWatch(settings.instances_dir, outbox.send, links)
    guestops = GuestOps(watch.links, blobs, outbox.send)
    consoles = Consoles(
        hypervisor, blobs, settings.instances_dir, outbox.send, backlog=outbox.backlog
    )
    executor = Executor(
        hypervisor,
        disks,
        settings.instances_dir,
        outbox.send,
        guestops=guestops,
        guestwatch=watch,
        network=network,
        consoles=consoles,
        blobs=blobs,
    )
    membership = Membership(settings.data_dir / "cluster-id")
    hypervisor.claim(membership.known())
    if network is not None:
        # Its record, egress bridge and floating range (ClaimRefused: another cluster's).
        network.claim(membership.known())

    def registered(cluster_id: str) -> None:
        cluster = membership.join(cluster_id)
        hypervisor.claim(cluster)
        if network is not None:
            network.claim(cluster)

    stream = ControlStream(
        settings.control_plane,
        identity,
        executor,
        blobs.credentials,
        outbox,
        backoff_base=settings.backoff_base,
        backoff_cap=settings.backoff_cap,
        sleep=sleep,
        on_connected=watch.connected,
        on_disconnected=consoles.close_all,
        on_console=consoles.relay,
        metrics=metrics,
        on_registered=registered,
    )
    metrics.registry.computed(
        "minicloud_guest_agents",
        "Instances on this node by the state of their in-guest agent.",
        ["agent_state"],
        lambda: {(state,): float(n) for state, n in watch.state_counts().items()},
    )
    metrics.registry.computed(
        "minicloud_control_stream_up",
        "1 while the stream to the control plane is up, else 0.",
        [],
        lambda: {(): 1.0 if stream.connected.is_set() else 0.0},
    )
    server = None
    if enabled(settings.metrics_listen):
        readiness = Readiness(hypervisor, stream.connected)
        server = MetricsServer(
            metrics.registry, settings.metrics_listen, readiness.check, settings.metrics_tls
        )
    return NodeAgent(
        settings,
        hypervisor,
        blobs,
        outbox,
        stream,
        executor,
        watch,
        guestops,
        consoles,
        metrics,
        server,
    )


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    settings.instances_dir.mkdir(parents=True, exist_ok=True)
    metrics = NodeMetrics()
    network = build_network(settings)
    if settings.tls is None:
        log.warning(
            "dialling the control plane without TLS (MINICLOUD_NODE_PLAINTEXT)",
            control_plane=settings.control_plane,
        )
        credentials = Credentials("system", settings.node_key())
    else:
        credentials = Credentials("system", "", tls=settings.tls.read())
    blobs = GrpcBlobs(settings.control_plane, credentials, metrics)
    hypervisor, disks = build_drivers(settings, blobs, metrics)
    try:
        agent = build(settings, hypervisor, disks, blobs, network, metrics=metrics)
    except FatalError:
        await blobs.close()
        await hypervisor.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node agent starting", name=settings.name, hypervisor=hypervisor.kind)
    await agent.run(stop)


def main() -> None:
    """Console script: minicloud-nodeagent."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        logs.configure()
        log.error("cannot start the node agent", error=str(exc))
        raise SystemExit(1) from None
    logs.configure(json=settings.log_json)
    try:
        asyncio.run(run(settings))
    except OSError as exc:
        log.error("cannot start the node agent", error=str(exc))
        raise SystemExit(1) from None
    except Exception as exc:
        fatal = _fatal(exc)
        if fatal is None:
            raise
        log.error("cannot go on: stopping the node agent", error=str(fatal))
        raise SystemExit(1) from None


def _fatal(exc: BaseException) -> FatalError | None:
    """The FatalError an exception is, or one of its group holds (task groups wrap them)."""
    if isinstance(exc, FatalError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _fatal(inner)) is not None:
                return found
    return None
