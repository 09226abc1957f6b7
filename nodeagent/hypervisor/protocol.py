"""The hypervisor port: what the executor needs from libvirt (or a fake).

Semantics every implementation honours (the contract suite checks them):

- Domains are keyed by instance UUID. ``power_state`` is one of ``on``,
  ``off``, ``paused``, ``crashed``.
- ``define_and_start`` is idempotent: for a domain that already exists it
  only makes sure the domain runs, and returns its state. With
  ``start=False`` it only defines (or refreshes the definition of) a domain
  that is not running, which stays off; a running one is left as it is.
- ``power`` acts on an existing domain and returns the state after the action;
  an unknown UUID raises ``DomainNotFound``; an action the domain's current
  state does not allow raises ``HypervisorError`` with ``retryable=False``.
  ``soft-reboot`` asks the guest (ACPI) and returns at once.
- ``remove`` stops and undefines a domain; removing a missing domain is a
  no-op.
- ``attach_interface`` hot plugs a NIC into a domain, live when it runs and
  in its persistent definition either way; attaching a NIC whose MAC the
  domain already has is a no-op; an unknown UUID raises ``DomainNotFound``.
- ``events`` yields a ``DomainEvent`` for every power-state change, including
  ones nobody asked for (the guest powered itself off, the process died,
  someone used ``virsh destroy``).
- Every domain has a serial console on a TCP port and a VNC or SPICE
  display on another (``ports`` of its state; chosen once per domain, kept
  across power cycles and node-agent restarts). The display has a password
  (``ports.vdi_password``): set at first start, new at every ``on``, kept by
  reboots, and known again to a restarted driver. ``console_endpoint`` says
  where to connect to the serial console; ``screenshot`` returns a PNG of
  the display of a running domain; ``usage`` gives counters of every
  running domain.
- ``disk_chain`` lists the files behind a disk of a domain (by its device
  name), the active one first. ``snapshot_disk`` takes an external,
  disk-only snapshot of one disk of a running domain (no snapshot metadata,
  atomic): the domain then writes to ``overlay`` (a new qcow2 on the disk's
  previous file, which stays a stable point in time); on failure nothing
  changed. ``commit_disk`` merges the active ``overlay`` back into its
  backing file (an active block commit), pivots the domain onto that file
  and deletes the overlay; on failure the job is abandoned and the domain
  keeps running on the overlay, as before the call.
- Blocking work runs off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.nodewire.domain import DomainRequest, NicRequest
from nodeagent.errors import NodeAgentError
from nodeagent.hypervisor.console_ports import ConsolePorts


class HypervisorError(NodeAgentError):
    """A hypervisor operation failed; ``retryable`` says whether to try again."""


class DomainNotFound(HypervisorError):
    """No domain exists for that instance."""


@dataclass(frozen=True)
class PreparedDisk:
    """A disk file ready to attach: its path, format, bus, device type and whether read-only."""

    path: Path
    bus: str = "virtio"
    device: str = "disk"
    format: str = "qcow2"
    readonly: bool = False


@dataclass(frozen=True)
class DomainState:
    """What a domain is doing now, and why it changed last."""

    uuid: str
    power_state: str
    reason: str = ""
    ports: ConsolePorts = field(default_factory=ConsolePorts)
    # Made before domains recorded their cluster: its control plane removes it only
    # if it knows the instance (another cluster's may share the node's name).
    legacy: bool = False


@dataclass(frozen=True)
class DiskUsage:
    """Counters of one disk; -1 where the hypervisor does not know."""

    actual_bytes: int = 0
    read_bytes: int = 0
    read_requests: int = 0
    write_bytes: int = 0
    write_requests: int = 0
    errors: int = -1


@dataclass(frozen=True)
class NicUsage:
    """Counters of one network interface, from the guest's point of view of the host side."""

    read_bytes: int = 0
    read_packets: int = 0
    read_errors: int = 0
    read_drops: int = 0
    write_bytes: int = 0
    write_packets: int = 0
    write_errors: int = 0
    write_drops: int = 0


@dataclass(frozen=True)
class DomainUsage:
    """CPU time in ns, disks by target device name, interfaces by MAC address."""

    cpu_time_ns: int = 0
    user_time_ns: int = 0
    system_time_ns: int = 0
    disks: dict[str, DiskUsage] = field(default_factory=dict)
    nics: dict[str, NicUsage] = field(default_factory=dict)


class Hypervisor(Protocol):
    """The operations the node agent performs on domains."""

    kind: str

    def claim(self, cluster_id: str) -> None:
        """Serve the cluster cluster_id: only its domains (and legacy ones) are managed."""
        ...

    async def list_domains(self) -> list[DomainState]:
        """Every domain this driver manages."""
        ...

    async def get_domain(self, uuid: str) -> DomainState | None:
        """One domain's state, or None when it does not exist."""
        ...

    async def define_and_start(
        self,
        spec: DomainRequest,
        disks: list[PreparedDisk],
        console_log: Path,
        *,
        start: bool = True,
    ) -> DomainState:
        """Define the domain (serial console logged to console_log) and start it (if start)."""
        ...

    async def power(self, uuid: str, action: str) -> DomainState:
        """Perform one of common.nodewire.power.POWER_ACTIONS."""
        ...

    async def remove(self, uuid: str) -> None:
        """Stop and undefine the domain, if it exists."""
        ...

    async def attach_interface(self, uuid: str, nic: NicRequest) -> None:
        """Hot plug a NIC (live if running, and persistently)."""

    async def disk_chain(self, uuid: str, device: str) -> list[Path]:
        """The disk's files, the active one first (HypervisorError: no such disk)."""
        ...

    async def snapshot_disk(self, uuid: str, device: str, overlay: Path) -> None:
        """External disk-only snapshot of one disk of a running domain onto ``overlay``."""
        ...

    async def commit_disk(self, uuid: str, device: str, overlay: Path) -> None:
        """Commit the active ``overlay`` into its backing file, pivot, delete the overlay."""
        ...

    async def console_endpoint(self, uuid: str) -> tuple[str, int]:
        """Host and TCP port of the domain's serial console (DomainNotFound if none)."""
        ...

    async def screenshot(self, uuid: str) -> bytes:
        """A PNG of the running domain's display."""
        ...

    async def usage(self) -> dict[str, DomainUsage]:
        """Counters of every running domain, by instance UUID."""
        ...

    async def versions(self) -> dict[str, str]:
        """What the host runs: ``qemu`` and ``libvirt`` versions ("" when unknown)."""
        ...

    def events(self) -> AsyncIterator[DomainState]:
        """Power-state changes as they happen, until close()."""
        ...

    async def close(self) -> None:
        """Release connections and end events()."""
        ...
