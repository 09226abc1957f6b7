"""The node agent's composition root and entry point: built in one place, run by one owner.

``build`` wires every part over the drivers it is given (``main`` picks
libvirt or the fakes from the settings; component tests and benchmarks pass
fakes): one ``Outbox`` that every part sends its reports to and the
``ControlStream`` drains, the executor, the guest watch (which owns the guest
links), guest operations and consoles. Nothing runs until
``NodeAgent.run(stop)``: it owns one TaskGroup (the stream, the observer,
the usage reporter), ends it when ``stop`` is set, and closes the links, the
blob channel and the hypervisor. Stopping the agent never stops guests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from common import logs
from nodeagent.blobclient import GrpcBlobs
from nodeagent.consoles import Consoles
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskBuilder
from nodeagent.executor import Executor
from nodeagent.guest.links import LinkSettings
from nodeagent.guest.ops import GuestOps
from nodeagent.guest.watch import GuestWatch
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import Hypervisor
from nodeagent.network.protocol import NetworkDriver
from nodeagent.observer import observe
from nodeagent.outbox import Outbox
from nodeagent.settings import Settings
from nodeagent.stream import ControlStream, Identity
from nodeagent.usage import report_usage

log = structlog.get_logger(__name__)


def machine_memory_mb() -> int:
    """Physical memory of this machine in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def build_drivers(settings: Settings, blobs: GrpcBlobs) -> tuple[Hypervisor, DiskBuilder]:
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

    async def run(self, stop: asyncio.Event) -> None:
        """Run the stream, the observer and the usage reporter until stop is set; then close."""
        try:
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
            await self.consoles.close_all()
            await self.watch.close()
            await self.blobs.close()
            await self.hypervisor.close()


def build(
    settings: Settings,
    hypervisor: Hypervisor,
    disks: DiskBuilder,
    blobs: GrpcBlobs,
    network: NetworkDriver | None = None,
    *,
    links: LinkSettings | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> NodeAgent:
    """Every part of a node agent over these drivers, wired; nothing runs yet."""
    identity = Identity(
        name=settings.name,
        address=settings.address,
        cpus=settings.cpus or os.cpu_count() or 1,
        memory_mb=settings.memory_mb or machine_memory_mb(),
        hypervisor=hypervisor.kind,
        console_host=settings.console_host,
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
    )
    return NodeAgent(
        settings, hypervisor, blobs, outbox, stream, executor, watch, guestops, consoles
    )


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    settings.instances_dir.mkdir(parents=True, exist_ok=True)
    blobs = GrpcBlobs(settings.control_plane, Credentials("system", settings.node_key()))
    hypervisor, disks = build_drivers(settings, blobs)
    agent = build(settings, hypervisor, disks, blobs, build_network(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node agent starting", name=settings.name, hypervisor=hypervisor.kind)
    await agent.run(stop)


def main() -> None:
    """Console script: minicloud-nodeagent."""
    settings = Settings.from_env()
    logs.configure(json=settings.log_json)
    asyncio.run(run(settings))
