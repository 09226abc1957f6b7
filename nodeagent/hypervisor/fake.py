"""An in-memory hypervisor that honours the same contract as the libvirt driver.

Used by fast component tests and by the scale simulation. ``crash`` and
``external_power`` stand in for things that happen behind the node agent's
back (a QEMU process dying, ``virsh destroy``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from nodeagent.hypervisor.protocol import (
    POWER_ACTIONS,
    DomainNotFound,
    DomainState,
    HypervisorError,
    PreparedDisk,
)
from nodeagent.hypervisor.transitions import target_of
from nodeagent.spec import DomainSpec, NicSpec


class FakeHypervisor:
    """Domains as dictionary entries; events through an asyncio queue."""

    kind = "fake"

    def __init__(self) -> None:
        self.domains: dict[str, DomainState] = {}
        self.specs: dict[str, DomainSpec] = {}
        self.disks: dict[str, list[PreparedDisk]] = {}
        self._events: asyncio.Queue[DomainState | None] = asyncio.Queue()

    async def list_domains(self) -> list[DomainState]:
        return list(self.domains.values())

    async def get_domain(self, uuid: str) -> DomainState | None:
        return self.domains.get(uuid)

    async def define_and_start(
        self, spec: DomainSpec, disks: list[PreparedDisk], console_log: Path
    ) -> DomainState:
        existing = self.domains.get(spec.uuid)
        if existing is not None and existing.power_state == "on":
            return existing
        self.specs[spec.uuid] = spec
        self.disks[spec.uuid] = list(disks)
        return self._set(spec.uuid, "on", "booted")

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
        return self._set(uuid, target, action)

    async def remove(self, uuid: str) -> None:
        if self.domains.pop(uuid, None) is not None:
            self.specs.pop(uuid, None)
            self.disks.pop(uuid, None)

    async def attach_interface(self, uuid: str, nic: NicSpec) -> None:
        spec = self.specs.get(uuid)
        if spec is None or uuid not in self.domains:
            raise DomainNotFound(f"no domain for instance {uuid}")
        if not nic.bridge:
            raise HypervisorError(f"interface {nic.uuid} has no bridge to attach to")
        if any(n.mac == nic.mac for n in spec.interfaces):
            return
        self.specs[uuid] = dataclasses.replace(spec, interfaces=(*spec.interfaces, nic))

    async def events(self) -> AsyncIterator[DomainState]:
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        self._events.put_nowait(None)

    def external_power(self, uuid: str, power_state: str, reason: str) -> None:
        """Change a domain's power state as something outside the agent would."""
        self._set(uuid, power_state, reason)

    def _set(self, uuid: str, power_state: str, reason: str) -> DomainState:
        state = DomainState(uuid=uuid, power_state=power_state, reason=reason)
        self.domains[uuid] = state
        self._events.put_nowait(state)
        return state
