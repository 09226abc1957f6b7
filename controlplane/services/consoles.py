"""Console use cases: the console log, screenshots, VDI helper files and attach sessions.

Everything except the VDI helper is done by the instance's node, asked with a
``console`` command: ``read`` returns the log's tail, ``clear`` empties it
(and an audit event records who did), ``screenshot`` uploads a PNG blob and
returns its uuid, ``open`` starts an interactive session whose bytes travel
as ``ConsoleRelay`` messages on the node stream. Console operations need a
``created`` instance on a connected node. The VDI helper's .vv file carries
the display password the node last reported (new at every power on): the
only place the API hands it out.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from common.nodewire.commands import ConsoleAction, ConsoleKind
from common.nodewire.messages import ConsoleRelay, Result
from controlplane import lifecycle
from controlplane.errors import FailedPrecondition, InvalidArgument, Unavailable
from controlplane.model import Event, Instance
from controlplane.nodes import ConsoleSink, NodeRegistry
from controlplane.store.blobs import BlobStore
from controlplane.store.records import Records

DEFAULT_LENGTH = 10240
MAX_INPUT_CHUNK = 64 * 1024
# Console output chunks buffered per attached client before it counts as stalled.
OUTPUT_QUEUE = 256
# Node outbox depth above which a client's keystrokes wait (gRPC then pushes back).
INPUT_HIGH = 1000


@dataclass(frozen=True)
class VdiHelper:
    """A virt-viewer file and what it says."""

    vv: str
    type: str
    host: str
    port: int
    tls_port: int


@dataclass(eq=False)
class Attachment:
    """One user's interactive console session."""

    session_id: str
    instance: Instance
    sink: ConsoleSink


def vv_file(kind: str, host: str, port: int, tls_port: int, title: str, password: str = "") -> str:
    """A virt-viewer (.vv) file: remote-viewer deletes it once read (delete-this-file).

    ``password`` is the display's (new at every power on); this file is the only
    place the API hands it out.
    """
    lines = ["[virt-viewer]", f"type={kind}", f"host={host}", f"port={port}"]
    if tls_port:
        lines.append(f"tls-port={tls_port}")
    if password:
        lines.append(f"password={password}")
    lines += ["delete-this-file=1", f"title={title}"]
    return "\n".join(lines) + "\n"


class ConsoleService:
    """What callers can do with instances' consoles."""

    def __init__(
        self,
        records: Records,
        nodes: NodeRegistry,
        blobs: BlobStore,
        fqdn: str,
        clock: Callable[[], float],
        timeout: float = 120.0,
    ) -> None:
        self.records = records
        self.nodes = nodes
        self.blobs = blobs
        self.fqdn = fqdn
        self.clock = clock
        self.timeout = timeout

    async def console_data(self, instance: Instance, length: int) -> bytes:
        """The last ``length`` bytes of the console log (10240 when 0, all when -1)."""
        if length < -1:
            raise InvalidArgument(f"length must be -1 (all), 0 (default) or positive, not {length}")
        outcome = await self._ask(instance, ConsoleKind.READ, length=length)
        return outcome.data

    async def clear(self, instance: Instance) -> None:
        """Empty the console log and record an audit event."""
        await self._ask(instance, ConsoleKind.CLEAR)
        event = Event(instance.uuid, "audit", "console log cleared", self.clock(), self.fqdn)
        await self.records.add_events(instance.namespace, [event])

    async def screenshot(self, instance: Instance) -> str:
        """A PNG of the instance's display, stored as a blob; returns the blob's uuid."""
        if instance.state == lifecycle.CREATED and instance.power_state not in ("on", "paused"):
            raise FailedPrecondition(
                f"instance {instance.uuid} is powered {instance.power_state}: nothing to capture"
            )
        outcome = await self._ask(instance, ConsoleKind.SCREENSHOT)
        if await self.blobs.get(outcome.blob_uuid) is None:
            raise Unavailable("the node's screenshot did not arrive; try again")
        return outcome.blob_uuid

    def vdi_helper(self, instance: Instance) -> VdiHelper:
        """The virt-viewer file for the instance's VNC or SPICE display."""
        self._check_created(instance)
        if not instance.vdi_port:
            raise FailedPrecondition(f"instance {instance.uuid} has no display port yet")
        session = self.nodes.sessions.get(instance.node)
        if session is None:
            raise Unavailable(f"node {instance.node} is not connected; try again later")
        host = session.node.console_host or session.node.address
        kind = "vnc" if instance.spec.video.vdi == "vnc" else "spice"
        tls = instance.vdi_tls_port if kind == "spice" else 0
        title = f"{instance.spec.name}:%d - %s"
        vv = vv_file(kind, host, instance.vdi_port, tls, title, instance.vdi_password)
        return VdiHelper(vv, kind, host, instance.vdi_port, tls)

    # -- interactive sessions -----------------------------------------------

    async def attach(self, instance: Instance) -> Attachment:
        """Open an interactive session on the instance's serial console, through its node."""
        session_id = uuidlib.uuid4().hex
        sink = ConsoleSink(instance.node, asyncio.Queue(maxsize=OUTPUT_QUEUE))
        self._check_created(instance)
        self.nodes.console_attach(session_id, instance.node, sink)
        try:
            await self._ask(instance, ConsoleKind.OPEN, session_id=session_id)
        except BaseException:
            self.nodes.consoles.pop(session_id, None)
            raise
        return Attachment(session_id, instance, sink)

    async def send_input(self, attachment: Attachment, data: bytes) -> None:
        """Keystrokes for the session (waits while the node's stream is backed up)."""
        if len(data) > MAX_INPUT_CHUNK:
            raise InvalidArgument(f"console input chunks are limited to {MAX_INPUT_CHUNK} bytes")
        if not data:
            return
        depth = self.nodes.console_input(attachment.session_id, data)
        while depth > INPUT_HIGH:
            await asyncio.sleep(0.05)
            session = self.nodes.sessions.get(attachment.sink.node)
            if session is None:
                return
            depth = session.outbox.qsize()

    def detach(self, attachment: Attachment) -> None:
        """End the session (the node closes its connection to the console)."""
        self.nodes.console_detach(attachment.session_id)

    # -- helpers -------------------------------------------------------------

    def _check_created(self, instance: Instance) -> None:
        if instance.state != lifecycle.CREATED:
            raise FailedPrecondition(
                f"instance {instance.uuid} is {instance.state}; consoles need a created instance"
            )

    async def _ask(
        self, instance: Instance, kind: ConsoleKind, length: int = 0, session_id: str = ""
    ) -> Result:
        self._check_created(instance)
        command = ConsoleAction(
            f"{instance.uuid}/console/{uuidlib.uuid4().hex}",
            instance.uuid,
            kind,
            length=length,
            session_id=session_id,
        )
        future = self.nodes.send(instance.node, command)
        try:
            outcome = await asyncio.wait_for(future, self.timeout)
        except TimeoutError as exc:
            raise Unavailable(f"node {instance.node} did not answer in time; try again") from exc
        if not outcome.ok:
            if outcome.retryable:
                raise Unavailable(outcome.error)
            raise FailedPrecondition(outcome.error)
        return outcome


def end_of(relay: ConsoleRelay | None) -> str | None:
    """None while a session goes on; the reason ("" for a clean end) once it ended."""
    if relay is None:
        return ""
    return relay.error if relay.close else None
