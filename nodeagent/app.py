"""The node agent's entry point and composition root.

Builds the hypervisor driver (libvirt, or the fake for simulations), the
disk builder, the executor, the observer and the stream, and runs them in one
TaskGroup until SIGTERM or SIGINT. Stopping the agent never stops guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

import structlog

from common import logs
from common.nodewire.messages import Observation
from nodeagent.blobclient import GrpcBlobs
from nodeagent.consoles import Consoles
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.disks.protocol import DiskBuilder
from nodeagent.executor import Executor
from nodeagent.guest.channel import GuestLinks
from nodeagent.guestops import GuestOps
from nodeagent.guestwatch import GuestWatch
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import Hypervisor
from nodeagent.network.protocol import NetworkDriver
from nodeagent.observer import observe
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
class Agent:
    """The node agent's long-lived parts."""

    stream: ControlStream
    links: GuestLinks
    watch: GuestWatch
    blobs: GrpcBlobs
    consoles: Consoles


def build_agent(
    settings: Settings,
    hypervisor: Hypervisor,
    disks: DiskBuilder,
    blobs: GrpcBlobs,
    network: NetworkDriver | None = None,
) -> Agent:
    """The stream, executor and guest-agent plumbing for these drivers."""
    identity = Identity(
        name=settings.name,
        address=settings.address,
        cpus=settings.cpus or os.cpu_count() or 1,
        memory_mb=settings.memory_mb or machine_memory_mb(),
        hypervisor=hypervisor.kind,
        console_host=settings.console_host,
    )
    stream: ControlStream
    watch = GuestWatch(settings.instances_dir, lambda status: stream.send(status))
    links = GuestLinks(watch.on_state)
    watch.links = links
    guestops = GuestOps(links, blobs, lambda output: stream.send(output))
    consoles = Consoles(
        hypervisor,
        blobs,
        settings.instances_dir,
        lambda relay: stream.send(relay),
        backlog=lambda: stream.backlog(),
    )
    executor = Executor(
        hypervisor,
        disks,
        settings.instances_dir,
        lambda e: stream.emit(e),
        guestops=guestops,
        guestwatch=watch,
        network=network,
        consoles=consoles,
    )

    def connected(inventory: list[Observation]) -> None:
        for domain in inventory:
            if domain.power_state == "on":
                watch.domain_on(domain.instance_uuid)
        watch.resend()

    stream = ControlStream(
        settings.control_plane,
        identity,
        executor,
        blobs.credentials,
        backoff_base=settings.backoff_base,
        backoff_cap=settings.backoff_cap,
        on_connected=connected,
        on_disconnected=consoles.close_all,
        on_console=consoles.relay,
    )
    return Agent(stream, links, watch, blobs, consoles)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    settings.instances_dir.mkdir(parents=True, exist_ok=True)
    blobs = GrpcBlobs(settings.control_plane, Credentials("system", settings.node_key()))
    hypervisor, disks = build_drivers(settings, blobs)
    agent = build_agent(settings, hypervisor, disks, blobs, build_network(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node agent starting", name=settings.name, hypervisor=hypervisor.kind)
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(agent.stream.run()),
                group.create_task(observe(hypervisor, agent.stream.send, agent.watch)),
                group.create_task(
                    report_usage(hypervisor, agent.stream.emit, settings.usage_interval)
                ),
            ]
            await stop.wait()
            log.info("node agent stopping; guests keep running")
            for task in tasks:
                task.cancel()
    await agent.links.close()
    await agent.blobs.close()
    await hypervisor.close()


def main() -> None:
    """Console script: minicloud-nodeagent."""
    settings = Settings.from_env()
    logs.configure(json=settings.log_json)
    asyncio.run(run(settings))
