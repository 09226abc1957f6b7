"""Which instances' in-guest agents to keep links to, and their reported state.

A running domain with an ``sf-agent`` channel gets a link (its socket is
``<instances_dir>/<uuid>/sf-agent.sock``); a domain that powers off loses it
and reports "not ready (instance powered off)". Every state change goes to
the control plane as an ``AgentStatus``; ``resend`` repeats the latest ones
after a reconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from common.nodewire.messages import AgentStatus

AGENT_CHANNEL = "sf-agent"
POWERED_OFF = "not ready (instance powered off)"


class LinksControl(Protocol):
    """Starting and stopping per-instance links."""

    def watch(self, uuid: str, socket_path: Path) -> None: ...

    def forget(self, uuid: str) -> None: ...


class GuestWatch:
    """Keeps links in step with domains' power states."""

    def __init__(self, instances_dir: Path, send: Callable[[AgentStatus], None]) -> None:
        self.instances_dir = instances_dir
        self.send = send
        self.links: LinksControl | None = None
        self.latest: dict[str, AgentStatus] = {}
        self.watched: set[str] = set()

    def socket_path(self, uuid: str) -> Path:
        """The host end of an instance's agent channel."""
        return self.instances_dir / uuid / f"{AGENT_CHANNEL}.sock"

    def on_state(self, uuid: str, agent_state: str, boot_time: float) -> None:
        """A link's state changed: remember it and tell the control plane."""
        status = AgentStatus(uuid, agent_state, boot_time)
        self.latest[uuid] = status
        self.send(status)

    def domain_on(self, uuid: str, has_agent: bool | None = None) -> None:
        """A domain runs: link to its agent if it has the channel."""
        if self.links is None:
            return
        path = self.socket_path(uuid)
        if uuid not in self.watched and (has_agent or (has_agent is None and path.exists())):
            self.watched.add(uuid)
            self.links.watch(uuid, path)

    def domain_off(self, uuid: str) -> None:
        """A domain stopped: drop its link and say so."""
        if self.links is not None and uuid in self.watched:
            self.watched.discard(uuid)
            self.links.forget(uuid)
            boot_time = self.latest[uuid].boot_time if uuid in self.latest else 0.0
            self.on_state(uuid, POWERED_OFF, boot_time)

    def domain_gone(self, uuid: str) -> None:
        """A domain was removed: forget everything about it."""
        if self.links is not None and uuid in self.watched:
            self.links.forget(uuid)
        self.watched.discard(uuid)
        self.latest.pop(uuid, None)

    def resend(self) -> None:
        """Send every instance's latest state again (after a reconnect)."""
        for status in list(self.latest.values()):
            self.send(status)
