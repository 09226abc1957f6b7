"""One framing session with one in-guest agent: ``GuestChannel``, and ``GetStream`` for file reads.

The guest is untrusted. Everything it sends goes through the bounded
``guestagent.protocol.Decoder`` (no frame over 64 KiB of JSON plus 1 MiB of
data, a bad header refused before anything is buffered); each request keeps
at most ``queue_frames`` frames waiting for its consumer and at most
``max_output`` bytes of each output stream; every wait has a deadline. A
garbled stream, a frame nobody asked for, a badly typed field or a missed
deadline closes that one connection (logged, and every request on it fails
with ``GuestUnavailable``); nothing is shared between instances' channels.

Errors::

    GuestChannelError             base; .retryable says whether to try again
    +-- GuestError                the guest answered ERROR (no such file, cannot
    |                             run the command...), retryable when it says so
    +-- GuestUnavailable          no connection, link reset, protocol violation or
                                  deadline; always retryable (after a reconnect)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from guestagent.protocol import (
    MAX_DATA,
    MAX_REQUEST_ID,
    VERSION,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    encode,
)
from nodeagent.errors import NodeAgentError

log = structlog.get_logger(__name__)
T = TypeVar("T")

NODE_AGENT_NAME = "minicloud-nodeagent"
MAX_TEXT = 4096  # longest guest-supplied string kept (messages, host names)
MAX_STALE_FRAMES = 1024  # frames from an earlier connection tolerated during a handshake
MAX_CANCELLED = 256  # abandoned requests whose trailing frames are still dropped

Output = Callable[[str, bytes], None]
Chunks = AsyncIterator[bytes] | Iterable[bytes]


SOCKET_BUFFER = 4 * 1024 * 1024


class GuestChannelError(NodeAgentError):
    """Something went wrong talking to a guest agent."""


class GuestError(GuestChannelError):
    """The guest agent answered with an error (the operation failed in the guest)."""


class GuestUnavailable(GuestChannelError):
    """No working link to the guest agent: not connected, reset, or too slow."""

    retryable = True


@dataclass(frozen=True)
class ChannelSettings:
    """Deadlines and bounds of one channel (seconds, bytes)."""

    connect_timeout: float = 10.0  # open the socket and receive the guest's HELLO
    reply_timeout: float = 10.0  # ping, is-system-running, a request's first answer
    idle_timeout: float = 30.0  # silence in a transfer; a stuck reader or consumer
    transfer_timeout: float = 3600.0  # a whole put or get
    execute_grace: float = 15.0  # added to an execute's own timeout
    max_output: int = 16 * 1024 * 1024  # stdout and stderr kept (each) by execute
    chunk_size: int = MAX_DATA  # put data per frame
    queue_frames: int = 16  # frames waiting per request
    max_requests: int = 32  # requests in flight
    read_size: int = 256 * 1024  # bytes read from the socket at a time


@dataclass(frozen=True)
class GuestHello:
    """What the guest agent said in the handshake."""

    version: int
    agent: str
    boot_time: float
    hostname: str
    ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Frozen:
    """What a freeze did in the guest: mount points frozen, and those skipped with why."""

    frozen: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    timeout: float = 0.0


@dataclass(frozen=True)
class ExecResult:
    """How a command ended and what it printed (the first ``max_output`` bytes of each)."""

    return_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


def _text(frame: Frame, name: str, default: str | None = None) -> str:
    return frame.str_field(name, default)[:MAX_TEXT]


def _error(frame: Frame) -> GuestError:
    message = frame.fields.get("message")
    retryable = frame.fields.get("retryable")
    text = message[:MAX_TEXT] if isinstance(message, str) else "the guest agent reported an error"
    return GuestError(text, retryable=retryable is True)


@dataclass
class _Pending:
    """A request in flight: frames for it wait in a bounded queue."""

    request_id: int
    what: str
    queue: asyncio.Queue[Frame | GuestChannelError]
    done: bool = False
    failure: GuestChannelError | None = None

    def deliver_failure(self, exc: GuestChannelError) -> None:
        """Fail the request once the frames that arrived before the failure are taken."""
        if self.failure is None:
            self.failure = exc
            if not self.queue.full():
                self.queue.put_nowait(exc)  # wakes a consumer waiting on an empty queue


FINAL_KINDS = frozenset({Kind.EXIT, Kind.OK, Kind.GET_END, Kind.ERROR, Kind.PONG, Kind.HELLO})


class GuestChannel:
    """One connection to one in-guest agent through a unix socket (the domain's channel).

    ``connect`` must succeed before anything else. Operations may run
    concurrently (up to ``max_requests``). Once the connection fails every
    operation raises ``GuestUnavailable``; make a new channel to reconnect,
    but not at once: wait half a second or so, because the guest agent only
    learns of a disconnect if it looks while no host is connected (until it
    does, it may still be in the middle of the old connection's frames).
    """

    def __init__(
        self,
        socket_path: Path | str,
        settings: ChannelSettings | None = None,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.settings = settings or ChannelSettings()
        self.name = name or str(socket_path)
        self.clock = clock
        self.hello: GuestHello | None = None
        self.decoder = Decoder()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[int, _Pending] = {}
        self._cancelled: set[int] = set()
        self._ids = itertools.count(1)
        self._failure: GuestUnavailable | None = None
        self._closed = asyncio.Event()
        self._handshaking = False

    # --- state ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful connect and the first failure or close."""
        return self.hello is not None and self._failure is None

    @property
    def closed(self) -> bool:
        """True once the connection failed or was closed."""
        return self._failure is not None

    @property
    def in_flight(self) -> int:
        """Requests waiting for answers."""
        return len(self._pending)

    @property
    def buffered(self) -> int:
        """Bytes the decoder holds for a frame not yet complete (at most one frame)."""
        return self.decoder.buffered

    @property
    def queued_frames(self) -> int:
        """Frames received but not yet taken by their requests."""
        return sum(pending.queue.qsize() for pending in self._pending.values())

    async def wait_closed(self) -> GuestUnavailable:
        """Wait until the connection fails or is closed; return why."""
        await self._closed.wait()
        assert self._failure is not None
        return self._failure

    # --- connection -------------------------------------------------------

    async def connect(self) -> GuestHello:
        """Open the socket, say hello and return the guest's hello (within connect_timeout)."""
        if self._writer is not None or self._failure is not None:
            raise RuntimeError("a GuestChannel connects once; make a new one to reconnect")
        deadline = self.settings.connect_timeout
        try:
            async with asyncio.timeout(deadline):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.socket_path)
                )
        except FileNotFoundError:
            raise self._closed_with(f"no channel socket at {self.socket_path}") from None
        except ConnectionRefusedError:
            raise self._closed_with(f"nothing listens on {self.socket_path}") from None
        except (OSError, TimeoutError) as exc:
            raise self._closed_with(f"cannot connect to {self.socket_path}: {exc}") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # Deep socket buffers keep a bulk put streaming while the guest drains its port.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self._read_task = asyncio.create_task(self._read_loop(), name=f"guest-read {self.name}")
        self._handshaking = True
        try:
            frame = await self._call(
                Frame(Kind.HELLO, 0, {"version": VERSION, "agent": NODE_AGENT_NAME}),
                "handshake",
                deadline,
            )
        except GuestError as exc:
            raise self._violation(
                f"the guest answered the handshake with an error: {exc}"
            ) from None
        finally:
            self._handshaking = False
        if frame.kind != Kind.HELLO:
            raise self._violation(f"answer to HELLO was {frame.kind.name}")
        try:
            hello = GuestHello(
                version=frame.int_field("version"),
                agent=_text(frame, "agent", ""),
                boot_time=frame.float_field("boot_time"),
                hostname=_text(frame, "hostname", ""),
                ops=tuple(
                    str(op)[:64]
                    for op in _list(frame.fields.get("ops"))[:64]
                    if isinstance(op, str)
                ),
            )
        except ProtocolError as exc:
            raise self._violation(str(exc)) from None
        if hello.version != VERSION:
            raise self._closed_with(
                f"the guest agent speaks protocol version {hello.version}, not {VERSION}"
            )
        self.hello = hello
        return hello

    async def close(self) -> None:
        """Close the connection; operations still waiting raise GuestUnavailable."""
        self._fail("channel closed", log_it=False)
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])  # propagates our own cancellation, not the task's

    # --- operations ---------------------------------------------------------

    async def ping(self) -> float:
        """Round trip to the guest agent and back, in seconds."""
        started = self.clock()
        frame = await self._call(Frame(Kind.PING), "ping", self.settings.reply_timeout)
        self._expect(frame, Kind.PONG, "ping")
        return self.clock() - started

    async def is_system_running(self) -> str:
        """The guest's system state: "running", "degraded", "starting"..."""
        request = Frame(Kind.REQUEST, 0, {"op": "is-system-running"})
        frame = await self._call(request, "is-system-running", self.settings.reply_timeout)
        self._expect(frame, Kind.OK, "is-system-running")
        return self._checked(lambda: _text(frame, "state"))

    async def freeze(self, timeout: float) -> Frozen:
        """Sync and freeze the guest's writable local file systems for at most ``timeout`` s.

        The guest thaws by itself after ``timeout`` (it caps it at 60 s), and
        when this connection ends.
        """
        request = Frame(Kind.REQUEST, 0, {"op": "freeze", "timeout": timeout})
        frame = await self._call(request, "freeze", self.settings.reply_timeout)
        self._expect(frame, Kind.OK, "freeze")

        def parse() -> Frozen:
            skipped = []
            for item in _list(frame.fields.get("skipped", [])):
                if not isinstance(item, dict):
                    raise ProtocolError("freeze skipped entries must be objects")
                skipped.append((str(item.get("path", "")), str(item.get("reason", ""))))
            frozen = tuple(str(p) for p in _list(frame.fields.get("frozen", [])))
            return Frozen(frozen, tuple(skipped), frame.float_field("timeout", timeout))

        return self._checked(parse)

    async def thaw(self) -> tuple[tuple[str, ...], bool]:
        """Thaw the guest's file systems: the mount points thawed, and whether the freeze
        had already ended by its timeout (then a snapshot may postdate the thaw)."""
        request = Frame(Kind.REQUEST, 0, {"op": "thaw"})
        frame = await self._call(request, "thaw", self.settings.reply_timeout)
        self._expect(frame, Kind.OK, "thaw")

        def parse() -> tuple[tuple[str, ...], bool]:
            thawed = tuple(str(p) for p in _list(frame.fields.get("thawed", [])))
            return thawed, frame.bool_field("expired", False)

        return self._checked(parse)

    async def execute(
        self,
        command: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 300.0,
        on_output: Output | None = None,
    ) -> ExecResult:
        """Run a command line with /bin/sh -c in the guest.

        ``on_output(stream, chunk)`` ("stdout" or "stderr") is called as
        output arrives; the result keeps the first ``max_output`` bytes of
        each stream. The guest kills the command after ``timeout`` seconds
        (``timed_out`` is then set); the channel gives up ``execute_grace``
        seconds later.
        """
        fields: dict[str, object] = {"op": "execute", "command": command, "timeout": timeout}
        if env:
            fields["env"] = dict(env)
        if cwd:
            fields["cwd"] = cwd
        pending = await self._start(Frame(Kind.REQUEST, 0, fields), "execute")
        deadline = self.clock() + timeout + self.settings.execute_grace
        kept = {Kind.STDOUT: bytearray(), Kind.STDERR: bytearray()}
        truncated = {Kind.STDOUT: False, Kind.STDERR: False}
        limit = self.settings.max_output
        try:
            while True:
                frame = await self._next(pending, deadline - self.clock())
                if frame.kind in kept:
                    buffer = kept[frame.kind]
                    room = limit - len(buffer)
                    buffer += frame.data[: max(room, 0)]
                    truncated[frame.kind] |= len(frame.data) > room
                    if on_output is not None:
                        on_output("stdout" if frame.kind == Kind.STDOUT else "stderr", frame.data)
                elif frame.kind == Kind.EXIT:
                    return_code = self._checked(partial(frame.int_field, "return_code"))
                    timed_out = self._checked(partial(frame.bool_field, "timed_out", False))
                    return ExecResult(
                        return_code=return_code,
                        stdout=bytes(kept[Kind.STDOUT]),
                        stderr=bytes(kept[Kind.STDERR]),
                        timed_out=timed_out,
                        stdout_truncated=truncated[Kind.STDOUT],
                        stderr_truncated=truncated[Kind.STDERR],
                    )
                else:
                    self._expect(frame, Kind.EXIT, "execute")
        finally:
            await self._abandon(pending)

    async def put(self, path: str, mode: int, chunks: Chunks) -> int:
        """Write a file in the guest from chunks (any sizes); return the bytes written.

        The guest writes a temporary file beside ``path`` and renames it into
        place with ``mode`` once complete, so a failed put leaves no partial
        file behind.
        """
        fields: dict[str, object] = {"op": "put", "path": path, "mode": mode}
        pending = await self._start(Frame(Kind.REQUEST, 0, fields), f"put {path}")
        deadline = self.clock() + self.settings.transfer_timeout
        sent = 0
        step = self.settings.chunk_size
        try:
            async for chunk in _iterate(chunks):
                view = memoryview(chunk)
                for offset in range(0, len(view), step):
                    self._early_answer(pending, "put")
                    piece = bytes(view[offset : offset + step])
                    await self._send(Frame(Kind.PUT_DATA, pending.request_id, data=piece))
                    sent += len(piece)
                if self.clock() > deadline:
                    raise self._fail(f"put {path} took longer than the transfer timeout")
            self._early_answer(pending, "put")
            await self._send(Frame(Kind.PUT_END, pending.request_id))
            frame = await self._next(pending, self.settings.idle_timeout)
            self._expect(frame, Kind.OK, "put")
            size = self._checked(lambda: frame.int_field("size"))
            if size != sent:
                raise GuestError(f"the guest wrote {size} bytes of {path}, {sent} were sent")
            return size
        finally:
            await self._abandon(pending)

    async def get(self, path: str) -> tuple[dict[str, Any], GetStream]:
        """Read a file from the guest: its stat result, then its content as a stream.

        Iterate the stream to the end or ``aclose()`` it (``async with`` does);
        chunks are read from the guest only as fast as they are consumed.
        """
        pending = await self._start(Frame(Kind.REQUEST, 0, {"op": "get", "path": path}), "get")
        try:
            frame = await self._next(pending, self.settings.reply_timeout)
            self._expect(frame, Kind.STAT, "get")
            stat: dict[str, Any] = self._checked(
                lambda: {
                    "size": frame.int_field("size"),
                    "mode": frame.int_field("mode"),
                    "mtime": frame.float_field("mtime"),
                    "uid": frame.int_field("uid"),
                    "gid": frame.int_field("gid"),
                }
            )
        except BaseException:
            await self._abandon(pending)
            raise
        return stat, GetStream(self, pending, path, self.clock() + self.settings.transfer_timeout)

    # --- requests -------------------------------------------------------------

    async def _call(self, frame: Frame, what: str, timeout: float) -> Frame:
        """Send a request and return its single answer (ERROR raises GuestError)."""
        pending = await self._start(frame, what)
        try:
            return await self._next(pending, timeout)
        finally:
            await self._abandon(pending)

    async def _start(self, frame: Frame, what: str) -> _Pending:
        if self._failure is not None:
            raise GuestUnavailable(str(self._failure))
        if self._writer is None:
            raise GuestUnavailable(f"{self.name}: not connected")
        if len(self._pending) >= self.settings.max_requests:
            raise GuestError(
                f"{self.settings.max_requests} requests already in flight", retryable=True
            )
        request_id = self._new_id()
        pending = _Pending(request_id, what, asyncio.Queue(self.settings.queue_frames))
        self._pending[request_id] = pending
        try:
            await self._send(Frame(frame.kind, request_id, frame.fields, frame.data))
        except BaseException:
            self._pending.pop(request_id, None)
            if self._failure is None:  # cancelled mid-send: drop whatever answers come
                self._cancelled.add(request_id)
            raise
        return pending

    def _new_id(self) -> int:
        while True:
            request_id = next(self._ids)
            if request_id > MAX_REQUEST_ID:
                self._ids = itertools.count(1)
                continue
            if request_id not in self._pending and request_id not in self._cancelled:
                return request_id

    async def _next(self, pending: _Pending, timeout: float) -> Frame:
        """The next frame for a request; ERROR raises GuestError, silence GuestUnavailable."""
        if pending.queue.empty() and pending.failure is not None:
            raise pending.failure
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                item = await pending.queue.get()
        except TimeoutError:
            raise self._fail(f"no answer to {pending.what} within {timeout:.1f} s") from None
        if isinstance(item, GuestChannelError):
            raise item
        if item.kind in FINAL_KINDS:
            pending.done = True
        if item.kind == Kind.ERROR:
            raise _error(item)
        return item

    def _early_answer(self, pending: _Pending, what: str) -> None:
        """Raise if the guest already answered a request still being sent (put)."""
        if pending.queue.empty():
            if pending.failure is not None:
                raise pending.failure
            return
        item = pending.queue.get_nowait()
        if isinstance(item, GuestChannelError):
            raise item
        pending.done = item.kind in FINAL_KINDS
        if item.kind == Kind.ERROR:
            raise _error(item)
        raise self._violation(f"{item.kind.name} frame while the {what} was being sent")

    async def _abandon(self, pending: _Pending) -> None:
        """Forget a request; cancel it in the guest if it has not finished."""
        if self._pending.pop(pending.request_id, None) is None or pending.done:
            return
        if self._failure is not None:
            return
        if len(self._cancelled) >= MAX_CANCELLED:
            self._fail("too many abandoned requests")
            return
        self._cancelled.add(pending.request_id)
        with contextlib.suppress(GuestChannelError):
            await self._send(Frame(Kind.CANCEL, pending.request_id))

    def _expect(self, frame: Frame, kind: Kind, what: str) -> None:
        if frame.kind != kind:
            raise self._violation(f"{frame.kind.name} frame in answer to {what}")

    def _checked(self, build: Callable[[], T]) -> T:
        """Build a result from guest fields; a badly typed field resets the link."""
        try:
            return build()
        except ProtocolError as exc:
            raise self._violation(str(exc)) from None

    # --- the connection ---------------------------------------------------------

    async def _send(self, frame: Frame) -> None:
        writer = self._writer
        if self._failure is not None or writer is None:
            raise GuestUnavailable(str(self._failure or f"{self.name}: not connected"))
        try:
            writer.write(encode(frame))
            async with asyncio.timeout(self.settings.idle_timeout):
                await writer.drain()
        except TimeoutError:
            raise self._fail(
                f"the guest read nothing for {self.settings.idle_timeout:.0f} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise self._fail(f"connection lost: {exc}") from None

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while self._failure is None:
                try:
                    data = await reader.read(self.settings.read_size)
                except (ConnectionError, OSError) as exc:
                    self._fail(f"connection lost: {exc}")
                    return
                if not data:
                    self._fail("the guest end closed the connection")
                    return
                try:
                    frames = self.decoder.feed(data)
                except ProtocolError as exc:
                    self._fail(f"garbled stream from the guest: {exc}")
                    return
                for frame in frames:
                    await self._dispatch(frame)
                    if self._failure is not None:
                        return
                await asyncio.sleep(0)  # a chatty guest must not starve other instances
        except Exception as exc:  # never let a guest crash the node agent
            log.exception("guest channel reader failed", channel=self.name)
            self._fail(f"internal error reading from the guest: {exc}")

    async def _dispatch(self, frame: Frame) -> None:
        rid = frame.request_id
        pending = self._pending.get(rid)
        if pending is not None:
            try:
                async with asyncio.timeout(self.settings.idle_timeout):
                    await pending.queue.put(frame)
            except TimeoutError:
                # the consumer stopped taking frames: give up on that request only
                self._pending.pop(rid, None)
                pending.deliver_failure(
                    GuestError(f"{pending.what}: frames were not consumed", retryable=True)
                )
                self._cancelled.add(rid)
                with contextlib.suppress(GuestChannelError):
                    await self._send(Frame(Kind.CANCEL, rid))
            return
        if rid in self._cancelled:
            if frame.kind in FINAL_KINDS:
                self._cancelled.discard(rid)
            return
        if rid == 0 and frame.kind == Kind.ERROR:
            # the guest drops what it gets until it sees a disconnect: start again
            self._fail(f"the guest agent reported a broken stream: {_error(frame)}")
        elif self._handshaking:
            return  # left over from an earlier connection or agent
        elif rid == 0 and frame.kind == Kind.HELLO:
            self._fail("the guest agent restarted")
        else:
            self._violation(f"{frame.kind.name} frame for request {rid}, which nobody asked for")

    def _violation(self, message: str) -> GuestUnavailable:
        return self._fail(f"protocol violation: {message}")

    def _closed_with(self, message: str) -> GuestUnavailable:
        return self._fail(message, log_it=False)

    def _fail(self, message: str, log_it: bool = True) -> GuestUnavailable:
        """Close the connection for good; every waiting request gets the failure."""
        if self._failure is not None:
            return GuestUnavailable(str(self._failure))
        failure = GuestUnavailable(f"{self.name}: {message}")
        self._failure = failure
        self._closed.set()
        if log_it:
            log.warning("guest link reset", channel=self.name, reason=message)
        writer = self._writer
        if writer is not None:
            writer.close()
        for pending in self._pending.values():
            pending.deliver_failure(failure)
        self.decoder.reset()
        self._cancelled.clear()
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        return failure


class GetStream:
    """The content of a file being read from the guest, chunk by chunk."""

    def __init__(self, channel: GuestChannel, pending: _Pending, path: str, deadline: float):
        self.channel = channel
        self.pending = pending
        self.path = path
        self.deadline = deadline
        self.received = 0
        self.finished = False

    def __aiter__(self) -> GetStream:
        return self

    async def __anext__(self) -> bytes:
        """The next chunk; StopAsyncIteration at the end of the file."""
        if self.finished:
            raise StopAsyncIteration
        channel = self.channel
        try:
            timeout = min(channel.settings.idle_timeout, self.deadline - channel.clock())
            frame = await channel._next(self.pending, timeout)
            if frame.kind == Kind.GET_DATA:
                self.received += len(frame.data)
                return frame.data
            channel._expect(frame, Kind.GET_END, "get")
            size = channel._checked(lambda: frame.int_field("size"))
            if size != self.received:
                raise channel._violation(f"GET_END says {size} bytes, {self.received} came")
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading (cancels the transfer in the guest if it is not complete)."""
        if not self.finished:
            self.finished = True
            await self.channel._abandon(self.pending)

    async def __aenter__(self) -> GetStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _iterate(chunks: Chunks) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterator):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
