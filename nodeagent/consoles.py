"""Console commands on this node: the console log, screenshots and interactive sessions.

``read`` and ``clear`` act on the instance's console log (see
``consolelog``); ``screenshot`` asks the hypervisor for a PNG and uploads it
as a blob; ``open`` connects to the instance's serial console TCP port
(QEMU's ``tcp`` chardev, on this host) and relays bytes both ways as
``ConsoleRelay`` messages over the node stream.

Nothing a guest or a console user does can stall the node agent:

- guest output is read in chunks of at most OUTPUT_CHUNK bytes and reading
  pauses while the node stream's outbox is backed up (the guest's serial
  port then waits, as it would for a slow terminal);
- keystrokes go through a queue of INPUT_QUEUE chunks per session; a user
  who types faster than the guest reads overflows it and the session is
  closed with an error, instead of memory growing;
- at most MAX_SESSIONS sessions per node, and one per instance (QEMU's TCP
  chardev serves one client at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

import structlog

from common.nodewire.commands import ConsoleAction, ConsoleKind
from common.nodewire.messages import ConsoleRelay, Result
from nodeagent import consolelog
from nodeagent.errors import NodeAgentError
from nodeagent.guest.ops import BlobTransfer
from nodeagent.hypervisor.protocol import Hypervisor, HypervisorError

log = structlog.get_logger(__name__)

OUTPUT_CHUNK = 16 * 1024
INPUT_QUEUE = 256
MAX_INPUT_CHUNK = 64 * 1024
MAX_SESSIONS = 64
CONNECT_TIMEOUT = 5.0
# Outbox depth (messages) above which console output waits.
OUTBOX_HIGH = 2000

Connect = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _open_connection(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


@dataclass(eq=False)
class _Session:
    session_id: str
    uuid: str
    writer: asyncio.StreamWriter
    input: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=INPUT_QUEUE)
    )
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class Consoles:
    """Runs console commands and holds this node's interactive console sessions."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        blobs: BlobTransfer,
        instances_dir: Path,
        send: Callable[[ConsoleRelay], None],
        backlog: Callable[[], int] = lambda: 0,
        connect: Connect = _open_connection,
    ) -> None:
        self.hypervisor = hypervisor
        self.blobs = blobs
        self.instances_dir = instances_dir
        self.send = send
        self.backlog = backlog
        self.connect = connect
        self.sessions: dict[str, _Session] = {}

    def console_log(self, uuid: str) -> Path:
        """Where an instance's serial console is logged."""
        return self.instances_dir / uuid / "console.log"

    async def run(self, command: ConsoleAction) -> Result:
        """Run one console command; failures become results, never exceptions."""
        kind, uuid = command.kind, command.instance_uuid
        try:
            match kind:
                case ConsoleKind.READ:
                    path = self.console_log(uuid)
                    data = await asyncio.to_thread(consolelog.read_tail, path, command.length)
                    return Result(command.command_id, uuid, True, data=data)
                case ConsoleKind.CLEAR:
                    await asyncio.to_thread(consolelog.clear, self.console_log(uuid))
                    return Result(command.command_id, uuid, True)
                case ConsoleKind.SCREENSHOT:
                    png = await self.hypervisor.screenshot(uuid)
                    blob = await self.blobs.upload(_one(png))
                    return Result(command.command_id, uuid, True, blob_uuid=blob)
                case ConsoleKind.OPEN:
                    await self._open(uuid, command.session_id)
                    return Result(command.command_id, uuid, True)
                case _:
                    assert_never(kind)
        except FileNotFoundError:
            return Result(command.command_id, uuid, True)  # no log yet: nothing to read or clear
        except (NodeAgentError, OSError, ValueError) as exc:
            retryable = isinstance(exc, NodeAgentError) and exc.retryable
            log.warning("console command failed", kind=kind, uuid=uuid, error=str(exc))
            return Result(command.command_id, uuid, False, str(exc), retryable)
        except Exception as exc:
            log.exception("console command crashed", kind=kind, uuid=uuid)
            return Result(command.command_id, uuid, False, f"internal error: {exc}")

    async def _open(self, uuid: str, session_id: str) -> None:
        if not session_id or session_id in self.sessions:
            raise ValueError(f"bad or duplicate console session id {session_id!r}")
        if len(self.sessions) >= MAX_SESSIONS:
            raise HypervisorError(f"this node already relays {MAX_SESSIONS} console sessions")
        if any(s.uuid == uuid for s in self.sessions.values()):
            raise HypervisorError("a console session is already attached to this instance")
        host, port = await self.hypervisor.console_endpoint(uuid)
        try:
            reader, writer = await asyncio.wait_for(self.connect(host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise HypervisorError(
                f"cannot connect to the serial console ({host}:{port}); "
                f"is the instance powered on? ({exc})"
            ) from exc
        session = _Session(session_id, uuid, writer)
        self.sessions[session_id] = session
        session.tasks = [
            asyncio.create_task(self._pump_output(session, reader)),
            asyncio.create_task(self._pump_input(session)),
        ]
        log.info("console session opened", uuid=uuid, session=session_id)

    async def _pump_output(self, session: _Session, reader: asyncio.StreamReader) -> None:
        error = "the serial console closed"
        try:
            while data := await reader.read(OUTPUT_CHUNK):
                self.send(ConsoleRelay(session.session_id, data))
                while self.backlog() > OUTBOX_HIGH and not session.closed:
                    await asyncio.sleep(0.05)
        except (OSError, asyncio.IncompleteReadError) as exc:
            error = f"the serial console failed: {exc}"
        await self._end(session, error, notify=True)

    async def _pump_input(self, session: _Session) -> None:
        try:
            while (data := await session.input.get()) is not None:
                session.writer.write(data)
                await session.writer.drain()
        except OSError as exc:
            await self._end(session, f"cannot write to the serial console: {exc}", notify=True)

    def relay(self, message: ConsoleRelay) -> None:
        """Keystrokes (or the end) of a session, from the control plane."""
        session = self.sessions.get(message.session_id)
        if session is None:
            return
        if message.close:
            self._spawn_end(session, "", notify=False)
            return
        if not message.data:
            return
        if len(message.data) > MAX_INPUT_CHUNK:
            self._spawn_end(session, "console input chunk too large", notify=True)
            return
        try:
            session.input.put_nowait(message.data)
        except asyncio.QueueFull:
            self._spawn_end(
                session, "console input overflow: the guest is not reading", notify=True
            )

    def _spawn_end(self, session: _Session, error: str, *, notify: bool) -> None:
        task = asyncio.ensure_future(self._end(session, error, notify=notify))
        session.tasks.append(task)

    async def _end(self, session: _Session, error: str, *, notify: bool) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.session_id, None)
        if notify:
            self.send(ConsoleRelay(session.session_id, close=True, error=error))
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        session.writer.close()
        with contextlib.suppress(Exception):
            await session.writer.wait_closed()
        log.info("console session closed", uuid=session.uuid, session=session.session_id)

    async def close_instance(self, uuid: str) -> None:
        """End the sessions of an instance that is going away."""
        for session in [s for s in self.sessions.values() if s.uuid == uuid]:
            await self._end(session, "the instance was deleted", notify=True)

    async def close_all(self) -> None:
        """End every session (the node stream is gone, so nobody is attached any more)."""
        for session in list(self.sessions.values()):
            await self._end(session, "", notify=False)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
