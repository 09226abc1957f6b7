"""Which instances' in-guest agents to keep links to, and their reported state.

A running domain with an ``sf-agent`` channel gets a link (its socket is
``<instances_dir>/<uuid>/sf-agent.sock``); a domain that powers off loses it
and reports "not ready (instance powered off)". The watch owns the links
(``GuestLinks``) and hears their state changes; every change goes to the
control plane as an ``AgentStatus``; ``connected`` links to the running
domains of a fresh inventory and repeats the latest states after a reconnect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from common.nodewire.agentstate import AgentState
from common.nodewire.messages import AgentStatus, Observation
from common.nodewire.power import PowerState
from nodeagent.guest.links import GuestLinks, LinkSettings

AGENT_CHANNEL = "sf-agent"


class GuestWatch:
    """Keeps links in step with domains' power states."""

    def __init__(
        self,
        instances_dir: Path,
        send: Callable[[AgentStatus], None],
        settings: LinkSettings | None = None,
    ) -> None:
        self.instances_dir = instances_dir
        self.send = send
        self.links = GuestLinks(self.on_state, settings)
        self.latest: dict[str, AgentStatus] = {}
        self.watched: set[str] = set()

    def socket_path(self, uuid: str) -> Path:
        """The host end of an instance's agent channel."""
        return self.instances_dir / uuid / f"{AGENT_CHANNEL}.sock"

    def on_state(self, uuid: str, agent_state: str, boot_time: float) -> None:
        """A link's state changed: remember it and tell the control plane."""
        status = AgentStatus(uuid, str(agent_state), boot_time)
        self.latest[uuid] = status
        self.send(status)

    def domain_on(self, uuid: str, has_agent: bool | None = None) -> None:
        """A domain runs: link to its agent if it has the channel."""
        path = self.socket_path(uuid)
        if uuid not in self.watched and (has_agent or (has_agent is None and path.exists())):
            self.watched.add(uuid)
            self.links.watch(uuid, path)

    def domain_off(self, uuid: str) -> None:
        """A domain stopped: drop its link and say so."""
        if uuid in self.watched:
            self.watched.discard(uuid)
            self.links.forget(uuid)
            boot_time = self.latest[uuid].boot_time if uuid in self.latest else 0.0
            self.on_state(uuid, AgentState.POWERED_OFF, boot_time)

    def domain_gone(self, uuid: str) -> None:
        """A domain was removed: forget everything about it."""
        if uuid in self.watched:
            self.links.forget(uuid)
        self.watched.discard(uuid)
        self.latest.pop(uuid, None)

    def state_counts(self) -> dict[str, int]:
        """How many instances' guest agents are in each agent_state now."""
        counts: dict[str, int] = {}
        for status in self.latest.values():
            counts[status.agent_state] = counts.get(status.agent_state, 0) + 1
        return counts

    def resend(self) -> None:
        """Send every instance's latest state again (after a reconnect)."""
        for status in list(self.latest.values()):
            self.send(status)

    def connected(self, inventory: Iterable[Observation]) -> None:
        """The stream (re)connected: link to every running domain, repeat the latest states."""
        for domain in inventory:
            if domain.power_state == PowerState.ON:
                self.domain_on(domain.instance_uuid)
        self.resend()

    async def close(self) -> None:
        """Stop every link."""
        await self.links.close()
