"""An in-memory hypervisor that honours the same contract as the libvirt driver.

Used by fast component tests and by the scale simulation. ``crash`` and
``external_power`` stand in for things that happen behind the node agent's
back (a QEMU process dying, ``virsh destroy``).

Each fake domain has a real serial console: a TCP server on its
``console_port`` (127.0.0.1), started when ``console_endpoint`` is first asked
for it (so simulations of thousands of domains open no sockets), that greets
with a banner and echoes what it is sent, logging both to the console log as
QEMU would. Its display password is new at every start, as with libvirt
(nothing listens on the display port). Screenshots are a plain
720x400 PNG; usage counters grow with the time the domain has been on.

Disk snapshots keep each disk's file chain in ``chains`` (instance -> device
-> files, active first); ``failures`` makes the next N calls of a step fail
(``snapshot``, ``commit`` or ``pivot``), leaving the chain as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from common.nodewire.devices import device_names
from common.nodewire.domain import DomainRequest, NicRequest
from common.nodewire.power import POWER_ACTIONS, PowerState, target_of
from nodeagent.hypervisor.console_ports import ConsolePorts, bindable, new_password, pick_ports
from nodeagent.hypervisor.protocol import (
    DiskUsage,
    DomainNotFound,
    DomainState,
    DomainUsage,
    HypervisorError,
    PreparedDisk,
)
from nodeagent.png import rgb_to_png

FAKE_BANNER = "fake-guest: boot complete"
SCREEN = (720, 400)


class FakeHypervisor:
    """Domains as dictionary entries; events through an asyncio queue."""

    kind = "fake"

    def __init__(
        self, console_host: str = "127.0.0.1", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.domains: dict[str, DomainState] = {}
        # What versions() reports, as a real host would.
        self.reported_versions = {"qemu": "8.2.0-fake", "libvirt": "9.0.0-fake"}
        self.specs: dict[str, DomainRequest] = {}
        self.disks: dict[str, list[PreparedDisk]] = {}
        self.console_host = console_host
        self.clock = clock
        self._ports: dict[str, ConsolePorts] = {}
        self._logs: dict[str, Path] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._taken: set[int] = set()
        self._on_since: dict[str, float] = {}
        self._on_total: dict[str, float] = {}
        self._events: asyncio.Queue[DomainState | None] = asyncio.Queue()
        self._closes = 0  # how often close was called: a stream ends at a close after it began
        self.cluster_id = ""
        self.chains: dict[str, dict[str, list[Path]]] = {}
        # Step name -> how many of its next calls fail.
        self.failures: dict[str, int] = {}

    def claim(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id

    async def list_domains(self) -> list[DomainState]:
        return list(self.domains.values())

    async def get_domain(self, uuid: str) -> DomainState | None:
        return self.domains.get(uuid)

    async def define_and_start(
        self,
        spec: DomainRequest,
        disks: list[PreparedDisk],
        console_log: Path,
        *,
        start: bool = True,
    ) -> DomainState:
        existing = self.domains.get(spec.uuid)
        current = existing.power_state if existing is not None else ""
        # A running domain stays as it is; a paused one is resumed only when starting.
        if existing is not None and (
            current == PowerState.ON or (current == PowerState.PAUSED and not start)
        ):
            return existing
        self.specs[spec.uuid] = spec
        self.disks[spec.uuid] = list(disks)
        self.chains.pop(spec.uuid, None)
        self._logs[spec.uuid] = console_log
        if spec.uuid not in self._ports:
            # No TLS here, so no vdi_tls_port (as on a node without SPICE TLS).
            console, vdi = pick_ports(2, self._taken, bindable(self.console_host))
            self._set_ports(spec.uuid, ConsolePorts(console, vdi))
        if start or not self._ports[spec.uuid].vdi_password:
            self._renew_password(spec.uuid)
        if not start:
            if existing is not None:
                return existing
            return self._set(spec.uuid, PowerState.OFF, "defined")
        self._log(spec.uuid, f"{FAKE_BANNER}\r\n".encode())
        return self._set(spec.uuid, PowerState.ON, "booted")

    async def power(self, uuid: str, action: str) -> DomainState:
        if action not in POWER_ACTIONS:
            raise HypervisorError(f"unknown power action {action!r}")
        current = self.domains.get(uuid)
        if current is None:
            raise DomainNotFound(f"no domain for instance {uuid}")
        target = target_of(action, current.power_state)
        if target is None:
            raise HypervisorError(f"cannot {action} a domain that is {current.power_state}")
        if action in ("soft-reboot", "hard-reboot"):
            return current if target == current.power_state else self._set(uuid, target, action)
        if action == "on":
            self._renew_password(uuid)
        return self._set(uuid, target, action)

    async def remove(self, uuid: str) -> None:
        if self.domains.pop(uuid, None) is not None:
            self.specs.pop(uuid, None)
            self.disks.pop(uuid, None)
            self.chains.pop(uuid, None)
            self._set_ports(uuid, None)
            self._logs.pop(uuid, None)
            self._on_since.pop(uuid, None)
            self._on_total.pop(uuid, None)
            server = self._servers.pop(uuid, None)
            if server is not None:
                server.close()

    def _chains(self, uuid: str) -> dict[str, list[Path]]:
        if uuid not in self.domains:
            raise DomainNotFound(f"no domain for instance {uuid}")
        if uuid not in self.chains:
            disks = self.disks.get(uuid, [])
            names = device_names((d.bus, d.device) for d in disks)
            self.chains[uuid] = {name: [d.path] for name, d in zip(names, disks, strict=True)}
        return self.chains[uuid]

    def _chain(self, uuid: str, device: str) -> list[Path]:
        chain = self._chains(uuid).get(device)
        if chain is None:
            raise HypervisorError(f"instance {uuid} has no disk {device}")
        return chain

    def _fail(self, step: str) -> None:
        left = self.failures.get(step, 0)
        if left > 0:
            self.failures[step] = left - 1
            raise HypervisorError(f"fake {step} failure")

    async def disk_chain(self, uuid: str, device: str) -> list[Path]:
        return list(self._chain(uuid, device))

    async def snapshot_disk(self, uuid: str, device: str, overlay: Path) -> None:
        chain = self._chain(uuid, device)
        if self.domains[uuid].power_state not in (PowerState.ON, PowerState.PAUSED):
            raise HypervisorError(f"instance {uuid} is not running")  # as libvirt: a live disk
        self._fail("snapshot")
        chain.insert(0, overlay)

    async def commit_disk(self, uuid: str, device: str, overlay: Path) -> None:
        chain = self._chain(uuid, device)
        if chain[0] != overlay or len(chain) < 2:
            raise HypervisorError(f"disk {device} of {uuid} does not run on {overlay}")
        self._fail("commit")
        self._fail("pivot")  # the job is abandoned: the domain stays on the overlay
        chain.pop(0)

    async def console_endpoint(self, uuid: str) -> tuple[str, int]:
        if uuid not in self.domains or uuid not in self._ports:
            raise DomainNotFound(f"no domain for instance {uuid}")
        # Served from the first request on: thousands of simulated domains open no sockets.
        await self._serve_console(uuid)
        return self.console_host, self._ports[uuid].console_port

    async def screenshot(self, uuid: str) -> bytes:
        state = self.domains.get(uuid)
        if state is None:
            raise DomainNotFound(f"no domain for instance {uuid}")
        if state.power_state not in (PowerState.ON, PowerState.PAUSED):
            raise HypervisorError(f"cannot take a screenshot: the domain is {state.power_state}")
        width, height = SCREEN
        return rgb_to_png(width, height, b"\x00\x00\xaa" * (width * height))

    async def versions(self) -> dict[str, str]:
        return dict(self.reported_versions)

    async def usage(self) -> dict[str, DomainUsage]:
        result = {}
        for uuid, state in self.domains.items():
            if state.power_state not in (PowerState.ON, PowerState.PAUSED):
                continue
            seconds = self._seconds_on(uuid)
            cpu = int(seconds * 20_000_000) + 1_000_000
            disks = {}
            for index, _disk in enumerate(self.disks.get(uuid, [])):
                grow = int(seconds * 4096)
                disks[f"vd{chr(ord('a') + index)}"] = DiskUsage(
                    actual_bytes=196_608 + grow,
                    read_bytes=1_048_576 + grow * 2,
                    read_requests=256 + int(seconds),
                    write_bytes=grow,
                    write_requests=int(seconds),
                    errors=-1,
                )
            result[uuid] = DomainUsage(cpu, cpu * 7 // 10, cpu * 3 // 10, disks, {})
        return result

    async def attach_interface(self, uuid: str, nic: NicRequest) -> None:
        spec = self.specs.get(uuid)
        if spec is None or uuid not in self.domains:
            raise DomainNotFound(f"no domain for instance {uuid}")
        if not nic.bridge:
            raise HypervisorError(f"interface {nic.uuid} has no bridge to attach to")
        if any(n.mac == nic.mac for n in spec.interfaces):
            return
        self.specs[uuid] = dataclasses.replace(spec, interfaces=(*spec.interfaces, nic))

    def events(self) -> AsyncIterator[DomainState]:
        """Power-state changes until the next close (a restarted agent may listen again)."""
        return self._events_until(self._closes)

    async def _events_until(self, closes: int) -> AsyncIterator[DomainState]:
        while True:
            event = await self._events.get()
            if event is not None:
                yield event
            elif self._closes > closes:
                return  # closed since this stream was asked for
            # else: the end marker of a close before this stream began; skip it

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        self._closes += 1
        self._events.put_nowait(None)

    def external_power(self, uuid: str, power_state: str, reason: str) -> None:
        """Change a domain's power state as something outside the agent would."""
        self._set(uuid, power_state, reason)

    def _seconds_on(self, uuid: str) -> float:
        since = self._on_since.get(uuid)
        running = self.clock() - since if since is not None else 0.0
        return self._on_total.get(uuid, 0.0) + running

    def _set(self, uuid: str, power_state: str, reason: str) -> DomainState:
        if power_state == PowerState.ON and uuid not in self._on_since:
            self._on_since[uuid] = self.clock()
        elif power_state != PowerState.ON and uuid in self._on_since:
            self._on_total[uuid] = self._seconds_on(uuid)
            del self._on_since[uuid]
        state = DomainState(uuid, power_state, reason, self._ports.get(uuid, ConsolePorts()))
        self.domains[uuid] = state
        self._events.put_nowait(state)
        return state

    def _set_ports(self, uuid: str, ports: ConsolePorts | None) -> None:
        """Record (or forget, with None) a domain's ports, keeping the taken set true."""
        old = self._ports.pop(uuid, None)
        if old is not None:
            self._taken.difference_update(old.ports())
        if ports is not None:
            self._ports[uuid] = ports
            self._taken.update(ports.ports())

    def _renew_password(self, uuid: str) -> None:
        spec = self.specs.get(uuid)
        kind = spec.video.vdi if spec is not None else "spice"
        self._ports[uuid] = dataclasses.replace(self._ports[uuid], vdi_password=new_password(kind))

    def _log(self, uuid: str, data: bytes) -> None:
        path = self._logs.get(uuid)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as handle:
                handle.write(data)

    async def _serve_console(self, uuid: str) -> None:
        if uuid in self._servers:
            return

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            greeting = f"fake console of {uuid}\r\n".encode()
            writer.write(greeting)
            self._log(uuid, greeting)
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    self._log(uuid, data)
                    await writer.drain()
            writer.close()

        for _ in range(5):
            port = self._ports[uuid].console_port
            try:
                self._servers[uuid] = await asyncio.start_server(serve, self.console_host, port)
                return
            except OSError:  # taken since it was picked: pick another
                (console,) = pick_ports(1, self._taken, bindable(self.console_host))
                self._set_ports(uuid, dataclasses.replace(self._ports[uuid], console_port=console))
        raise HypervisorError(f"cannot serve the console of {uuid}")
