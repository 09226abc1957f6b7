"""Keeping a guest channel per running instance alive: ``GuestLinks``.

``GuestLinks`` runs one task per watched instance: connect (the socket may
not exist yet while the domain starts), handshake, ask is-system-running,
then ping every ``heartbeat`` seconds; on any failure it reconnects with
backoff. It calls ``on_state(uuid, agent_state, boot_time)`` whenever the
state or the guest's boot time changes; the caller compares boot times to
notice reboots. States (``common.nodewire.agentstate.AgentState``):
"not ready (no contact)" until the first handshake, "ready" (or "ready
(degraded)", or "not ready (<state>)" while the guest's system is still e.g.
starting), and "not ready (unresponsive)" once a guest that answered before
has been silent for ``unresponsive_after`` seconds. "not ready (instance
powered off)" is the caller's to report (it knows power states).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from common.nodewire.agentstate import AgentState, is_ready
from nodeagent.guest.channel import ChannelSettings, GuestChannel, GuestChannelError
from nodeagent.guest.states import system_agent_state

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    """How GuestLinks keeps links alive (seconds)."""

    heartbeat: float = 5.0  # between pings on a ready link
    unresponsive_after: float = 15.0  # silence before a guest that answered is unresponsive
    backoff_base: float = 0.5  # first reconnect delay
    backoff_cap: float = 5.0  # longest reconnect delay
    channel: ChannelSettings = field(default_factory=ChannelSettings)


StateCallback = Callable[[str, str, float], None]


class _Link:
    """The loop that keeps one instance's channel alive."""

    def __init__(self, links: GuestLinks, uuid: str, socket_path: Path) -> None:
        self.links = links
        self.uuid = uuid
        self.socket_path = socket_path
        self.channel: GuestChannel | None = None
        self.state = ""
        self.boot_time = 0.0
        self.stopped = False
        self.task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return is_ready(self.state) and self.channel is not None

    def report(self, state: str, boot_time: float) -> None:
        state = str(state)  # a plain string from here on (logs show it as such)
        if self.stopped or (state, boot_time) == (self.state, self.boot_time):
            return
        if state != self.state:
            log.info("guest agent state", instance=self.uuid, state=state, boot_time=boot_time)
        self.state, self.boot_time = state, boot_time
        try:
            self.links.on_state(self.uuid, state, boot_time)
        except Exception:
            log.exception("agent state callback failed", instance=self.uuid)

    async def drop_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

    async def pause(self, channel: GuestChannel, seconds: float) -> None:
        """Sleep until the next heartbeat, or raise as soon as the channel fails."""
        naps = asyncio.ensure_future(self.links.sleep(seconds))
        closed = asyncio.ensure_future(channel.wait_closed())
        try:
            await asyncio.wait({naps, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            naps.cancel()
            closed.cancel()
        if channel.closed:
            raise await channel.wait_closed()

    async def run(self) -> None:
        settings = self.links.settings
        clock, sleep = self.links.clock, self.links.sleep
        self.report(AgentState.NO_CONTACT, 0.0)
        had_contact = False
        last_contact = clock()
        failures = 0
        try:
            while True:
                system: str | None = None
                try:
                    if self.channel is None:
                        channel = GuestChannel(self.socket_path, settings.channel, name=self.uuid)
                        self.channel = channel
                        hello = await channel.connect()
                        system = await channel.is_system_running()
                        boot_time = hello.boot_time
                    else:
                        channel = self.channel
                        await self.pause(channel, settings.heartbeat)
                        if self.state == AgentState.READY:
                            await channel.ping()
                        else:
                            system = await channel.is_system_running()
                        boot_time = self.boot_time
                except GuestChannelError as exc:
                    await self.drop_channel()
                    failures += 1
                    if had_contact and clock() - last_contact >= settings.unresponsive_after:
                        self.report(AgentState.UNRESPONSIVE, self.boot_time)
                    log.debug("guest agent not reachable", instance=self.uuid, error=str(exc))
                    # never reconnect at once: the guest agent only notices a
                    # disconnect if it looks while nobody is connected
                    delay = settings.backoff_base * 2 ** min(failures - 1, 16)
                    await sleep(min(delay, settings.backoff_cap))
                    continue
                failures = 0
                had_contact = True
                last_contact = clock()
                state = self.state if system is None else system_agent_state(system)
                self.report(state, boot_time)
        finally:
            await self.drop_channel()


class GuestLinks:
    """One guest channel per running instance, kept alive, with its agent_state reported.

    ``watch`` and ``forget`` need a running event loop; ``close`` stops all.
    ``on_state(uuid, agent_state, boot_time)`` is called from the loop (it
    must not block); it is never called for an instance after ``forget``.
    """

    def __init__(
        self,
        on_state: StateCallback,
        settings: LinkSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.on_state = on_state
        self.settings = settings or LinkSettings()
        self.clock = clock
        self.sleep = sleep
        self._links: dict[str, _Link] = {}

    def watch(self, uuid: str, socket_path: Path) -> None:
        """Keep a link to this instance's agent (again, if the path changed)."""
        link = self._links.get(uuid)
        if link is not None and link.socket_path == Path(socket_path):
            return
        if link is not None:
            self.forget(uuid)
        link = _Link(self, uuid, Path(socket_path))
        link.task = asyncio.create_task(link.run(), name=f"guest-link {uuid}")
        self._links[uuid] = link

    def forget(self, uuid: str) -> None:
        """Stop linking to this instance (no further state reports)."""
        link = self._links.pop(uuid, None)
        if link is None:
            return
        link.stopped = True
        if link.task is not None:
            link.task.cancel()

    def channel(self, uuid: str) -> GuestChannel | None:
        """The instance's channel when its agent is ready, else None."""
        link = self._links.get(uuid)
        if link is None or not link.ready or link.channel is None or link.channel.closed:
            return None
        return link.channel

    def state(self, uuid: str) -> tuple[str, float] | None:
        """The last reported (agent_state, boot_time) of a watched instance."""
        link = self._links.get(uuid)
        return None if link is None else (link.state, link.boot_time)

    def watched(self) -> list[str]:
        """UUIDs of the watched instances."""
        return list(self._links)

    async def close(self) -> None:
        """Stop every link and wait for their channels to close."""
        links = list(self._links.values())
        for link in links:
            self.forget(link.uuid)
        tasks = [link.task for link in links if link.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
