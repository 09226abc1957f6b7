"""The in-guest agent's entry point: find the sf-agent port and serve the guest protocol.

Usage::

    python3 -m guestagent.serve [--port-name sf-agent] [--device PATH]
    python3 -m guestagent.serve --listen PATH     # tests: a unix socket, freezes simulated

Standard library only (Python 3.8 or later), nothing from the rest of the
project. See ``guestagent.protocol`` for the frames.

How a virtio-serial port behaves in the guest (Linux ``virtio_console``,
checked on the Debian 6.1 cloud kernel under QEMU):

* with no host connected to the other end (libvirt's socket has no client),
  ``read`` returns 0 bytes at once and ``poll`` reports POLLIN|POLLHUP at
  once, so the reader sleeps briefly and tries again;
* a connected host with nothing to say makes ``poll`` block; a disconnect
  wakes it and the next ``read`` returns 0: that is how the agent learns a
  host connection ended, and everything the old connection asked for is
  abandoned;
* a ``read`` returns at most one receive buffer (a 4 KiB page), so the agent
  reads with ``readv`` into page-sized pieces: the kernel then drains several
  buffers per system call;
* ``write`` blocks (EAGAIN here, as the port is non-blocking) while no host is
  connected, and takes at most 32 KiB per call; each frame the agent sends
  fits in one call, so a host never sees half a frame;
* a host that disconnects and connects again quickly can go unnoticed (the
  reader only sees the gap if it looks during it), so a host HELLO also
  starts a new session, and hosts pause briefly before reconnecting;
* bytes a host sent to an agent that died may still be queued when the next
  agent opens the port, so the first bytes seen can be the middle of a frame;
  the host's socket stays connected across agent restarts, which is why a
  new agent announces itself with an unsolicited HELLO (request id 0).

Garbage from the host (any ``ProtocolError``) is answered with an ERROR frame
with request id 0; the agent then abandons that connection's requests and
discards input until the host disconnects, since a broken stream has no frame
boundaries left. A HELLO from the host starts a new session as well (so a
disconnect the agent slept through does no harm). The agent serves requests
concurrently, one thread per request, and logs sparingly to stderr.
SIGTERM abandons the current requests (commands killed, partial files
deleted) before the agent exits.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from guestagent.handlers import FREEZER, OPS, FreezeHandler, Handler
from guestagent.protocol import (
    VERSION,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    encode,
)

AGENT_VERSION = "1.0"
AGENT_NAME = f"minicloud-guestagent/{AGENT_VERSION}"
READ_SIZE = 256 * 1024
PAGE = 4096  # virtio_console's receive buffers: one read() returns at most one of them
IDLE_POLL = 0.1  # seconds between reads while no host is connected
WRITE_TIMEOUT = 30.0  # a host that reads nothing for this long is dropped
MAX_REQUESTS = 64
COMPLAINT_INTERVAL = 1.0  # while discarding, at most one ERROR per this many seconds


def log(message: str) -> None:
    """One line on stderr (the init collects it in /var/log/minicloud)."""
    with contextlib.suppress(OSError):
        print(f"guestagent: {message}", file=sys.stderr, flush=True)


class HostGone(Exception):
    """The host end is not connected (or stopped reading): nothing can be sent."""


class PortLost(Exception):
    """The port itself failed (unplugged): it has to be found and opened again."""


class Port:
    """A byte pipe to the host that can tell when the host disconnects."""

    def read(self) -> bytes | None:
        """Block until bytes arrive (returned) or the host disconnects (None)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Write all of data or raise HostGone."""
        raise NotImplementedError

    def try_write(self, data: bytes) -> bool:
        """Write a small frame only if a host is connected and it fits right now."""
        return False

    def close(self) -> None:
        """Release the port."""


class VirtioPort(Port):
    """A virtio-serial character device (/dev/vportNpM), opened non-blocking."""

    def __init__(self, path: str, write_timeout: float = WRITE_TIMEOUT) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.write_timeout = write_timeout
        self.connected = False
        self.reader = select.poll()
        self.reader.register(self.fd, select.POLLIN)
        self.writer = select.poll()
        self.writer.register(self.fd, select.POLLOUT)
        # readv with page-sized pieces drains many receive buffers per system call
        # (the kernel calls the driver's read() once per piece while they come full)
        self.view = memoryview(bytearray(READ_SIZE))
        self.pieces = [self.view[at : at + PAGE] for at in range(0, READ_SIZE, PAGE)]

    def read(self) -> bytes | None:
        """Bytes from the host, or None once when the host disconnects."""
        while True:
            try:
                data = bytes(self.view[: os.readv(self.fd, self.pieces)])
            except BlockingIOError:
                self.reader.poll(1000)
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                raise PortLost(f"reading {self.path} failed: {exc}") from exc
            if data:
                self.connected = True
                return data
            if self.connected:
                self.connected = False
                return None
            time.sleep(IDLE_POLL)  # no host: poll() would return at once

    def write(self, data: bytes) -> None:
        """Write in calls of at most 32 KiB, waiting while the port is full."""
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout
        while view:
            try:
                view = view[os.write(self.fd, view[:32768]) :]
                continue
            except BlockingIOError:
                pass
            except InterruptedError:
                continue
            except OSError as exc:
                raise HostGone(f"writing to the port failed: {exc}") from exc
            events = self.writer.poll(500)
            if any(mask & select.POLLHUP and not mask & select.POLLOUT for _, mask in events):
                raise HostGone("no host is connected")
            if time.monotonic() > deadline:
                raise HostGone(f"the host read nothing for {self.write_timeout:.0f} s")

    def try_write(self, data: bytes) -> bool:
        """One non-blocking write of a small frame; False when it cannot go now."""
        try:
            return os.write(self.fd, data) == len(data)
        except OSError:
            return False

    def close(self) -> None:
        """Close the device."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


class ListenPort(Port):
    """A unix socket the agent listens on, one host connection at a time (for tests)."""

    def __init__(self, path: str, write_timeout: float = WRITE_TIMEOUT) -> None:
        self.path = path
        self.write_timeout = write_timeout
        if os.path.exists(path):
            os.unlink(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()

    def read(self) -> bytes | None:
        """Bytes from the connected host (accepting one first), None when it leaves."""
        conn = self.conn
        if conn is None:
            conn, _ = self.server.accept()
            seconds = int(self.write_timeout)
            send_timeout = struct.pack("ll", seconds, int((self.write_timeout - seconds) * 1e6))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, send_timeout)
            with self.lock:
                self.conn = conn
        try:
            data = conn.recv(READ_SIZE)
        except OSError:
            data = b""
        if data:
            return data
        with self.lock:
            self.conn = None
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        return None

    def write(self, data: bytes) -> None:
        """sendall on the current connection, or HostGone."""
        with self.lock:
            if self.conn is None:
                raise HostGone("no host is connected")
            try:
                self.conn.sendall(data)
            except OSError as exc:
                raise HostGone(f"sending failed: {exc}") from exc


def boot_time() -> float:
    """When the guest booted (Unix time), from /proc/stat's btime."""
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
        with open("/proc/uptime") as uptime:
            return time.time() - float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return 0.0


def hello_fields() -> dict[str, object]:
    """What the guest says about itself in a HELLO."""
    return {
        "version": VERSION,
        "agent": AGENT_NAME,
        "boot_time": boot_time(),
        "hostname": socket.gethostname(),
        "ops": sorted(OPS),
    }


class Session:
    """One host connection: its requests, and whether frames may still be sent on it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.alive = True
        self.handlers: dict[int, Handler] = {}
        self.lock = threading.Lock()

    def send(self, frame: Frame) -> bool:
        """Send a frame on this connection; False (and the session ends) if it cannot go."""
        data = encode(frame)
        with self.agent.write_lock:
            if not self.alive:
                return False
            try:
                self.agent.port.write(data)
                return True
            except HostGone as exc:
                reason = str(exc)
        self.end(f"cannot send: {reason}")
        return False

    def add(self, handler: Handler) -> str | None:
        """Register a handler; a reason when it cannot be accepted."""
        with self.lock:
            if handler.request_id in self.handlers:
                return f"request id {handler.request_id} is already in use"
            if len(self.handlers) >= MAX_REQUESTS:
                return f"too many requests in flight (limit {MAX_REQUESTS})"
            self.handlers[handler.request_id] = handler
        handler.on_done = self.remove
        return None

    def remove(self, handler: Handler) -> None:
        """Forget a finished handler."""
        with self.lock:
            if self.handlers.get(handler.request_id) is handler:
                del self.handlers[handler.request_id]

    def get(self, request_id: int) -> Handler | None:
        """The handler for a request id, if it is still running."""
        with self.lock:
            return self.handlers.get(request_id)

    def end(self, reason: str) -> None:
        """Stop sending on this connection, thaw what it froze, abandon its requests."""
        FREEZER.release(self)  # first: logging to a frozen file system would block
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            handlers = list(self.handlers.values())
            self.handlers.clear()
        if handlers:
            log(f"abandoning {len(handlers)} request(s): {reason}")
        for handler in handlers:
            handler.cancel()


class Agent:
    """Reads frames from the port and dispatches them to handlers."""

    def __init__(self, port: Port) -> None:
        self.port = port
        self.write_lock = threading.Lock()
        self.decoder = Decoder()
        self.session: Session | None = None
        self.discarding: str | None = None  # why input is being discarded
        self.complained_at = 0.0

    def announce(self) -> None:
        """Tell a host that may already be connected that a new agent started."""
        self.port.try_write(encode(Frame(Kind.HELLO, 0, hello_fields())))

    def serve_forever(self) -> None:
        """Serve until the port is lost; other unexpected errors are logged, never fatal."""
        while True:
            try:
                self.step()
            except PortLost:
                self.disconnected()
                raise
            except Exception:
                traceback.print_exc()
                time.sleep(1)

    def step(self) -> None:
        """Read once and handle what arrived."""
        data = self.port.read()
        if data is None:
            self.disconnected()
            return
        if self.discarding is not None:
            self.complain()
            return
        session = self.session
        if session is None or not session.alive:
            session = self.session = Session(self)
            self.decoder.reset()
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            self.garbage(exc)
            return
        for frame in frames:
            session = self.dispatch(session, frame)

    def disconnected(self) -> None:
        """The host went away: end its session and get ready for the next one."""
        if self.session is not None:
            self.session.end("the host disconnected")
        self.session = None
        self.decoder.reset()
        if self.discarding is not None:
            log("host disconnected; accepting frames again")
        self.discarding = None

    def garbage(self, exc: ProtocolError) -> None:
        """Report a broken stream, then ignore input until the host reconnects."""
        if self.session is not None:
            FREEZER.release(self.session)
        log(f"protocol error from the host: {exc}; discarding input until it reconnects")
        if self.session is not None:
            self.session.end("protocol error")
        self.discarding = f"protocol error: {exc}; input discarded until the host reconnects"
        self.complained_at = 0.0
        self.complain()

    def complain(self) -> None:
        """While discarding, answer input with ERROR (id 0), at most once a second.

        A host that reconnected before this agent noticed the disconnect
        learns at once that its frames are being dropped, and reconnects.
        """
        now = time.monotonic()
        if self.discarding is None or now - self.complained_at < COMPLAINT_INTERVAL:
            return
        self.complained_at = now
        frame = Frame(Kind.ERROR, 0, {"message": self.discarding, "retryable": True})
        with self.write_lock, contextlib.suppress(HostGone):
            self.port.write(encode(frame))

    def dispatch(self, session: Session, frame: Frame) -> Session:
        """Act on one frame from the host; return the session that continues."""
        rid = frame.request_id
        if frame.kind == Kind.HELLO:
            session.end("the host said hello (new session)")
            self.session = session = Session(self)
            session.send(Frame(Kind.HELLO, rid, hello_fields()))
        elif frame.kind == Kind.PING:
            session.send(Frame(Kind.PONG, rid, {"time": time.time()}))
        elif frame.kind == Kind.REQUEST:
            self.request(session, frame)
        elif frame.kind in (Kind.PUT_DATA, Kind.PUT_END):
            handler = session.get(rid)
            if handler is not None:  # else: the request failed or was cancelled
                handler.feed(frame)
        elif frame.kind == Kind.CANCEL:
            handler = session.get(rid)
            if handler is not None:
                handler.cancel()
        else:
            message = f"the guest does not accept {frame.kind.name} frames"
            session.send(Frame(Kind.ERROR, rid, {"message": message, "retryable": False}))
        return session

    def request(self, session: Session, frame: Frame) -> None:
        """Start the handler for a REQUEST frame, or answer ERROR."""
        rid = frame.request_id
        op = frame.fields.get("op")
        factory = OPS.get(op) if isinstance(op, str) else None
        if factory is None:
            message = f"unknown op {op!r}; this agent knows {', '.join(sorted(OPS))}"
            session.send(Frame(Kind.ERROR, rid, {"message": message, "retryable": False}))
            return
        try:
            if factory is FreezeHandler:
                handler: Handler = FreezeHandler(rid, session.send, frame, owner=session)
            else:
                handler = factory(rid, session.send, frame)
        except ProtocolError as exc:
            session.send(Frame(Kind.ERROR, rid, {"message": str(exc), "retryable": False}))
            return
        refused = session.add(handler)
        if refused is not None:
            session.send(Frame(Kind.ERROR, rid, {"message": refused, "retryable": True}))
            return
        handler.start()


def find_port(name: str) -> str | None:
    """/dev/vportNpM of the virtio-serial port with that name (no udev needed)."""
    for name_file in sorted(glob.glob("/sys/class/virtio-ports/*/name")):
        try:
            with open(name_file) as handle:
                if handle.read().strip() == name:
                    return "/dev/" + os.path.basename(os.path.dirname(name_file))
        except OSError:
            continue
    return None


def open_port(args: argparse.Namespace) -> Port:
    """Open the port the arguments name, waiting for it to appear."""
    if args.listen:
        return ListenPort(args.listen)
    waited = False
    while True:
        path = args.device or find_port(args.port_name)
        if path is not None:
            try:
                port = VirtioPort(path)
                log(f"serving protocol version {VERSION} on {path}")
                return port
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBUSY):
                    raise
        if not waited:
            log(f"waiting for the port {args.device or args.port_name}")
            waited = True
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    """Find the port and serve it forever."""
    parser = argparse.ArgumentParser(prog="python3 -m guestagent.serve", description=__doc__)
    parser.add_argument("--port-name", default="sf-agent", help="virtio-serial port name")
    parser.add_argument("--device", help="open this device instead of looking the name up")
    parser.add_argument(
        "--listen",
        help="serve on a unix socket at this path (tests; freezes are then simulated, "
        "so a test never freezes the host's file systems)",
    )
    args = parser.parse_args(argv)
    if args.listen:
        FREEZER.ioctl = lambda fd, request, arg: 0
    # SIGTERM ends the agent through SystemExit, so that requests are abandoned
    # properly (commands killed, partial files deleted) before it exits
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    FREEZER.log = log
    while True:
        port = open_port(args)
        agent = Agent(port)
        agent.announce()
        try:
            agent.serve_forever()
        except PortLost as exc:
            log(f"{exc}; opening the port again")
            port.close()
            time.sleep(1)
        finally:
            if agent.session is not None:
                agent.session.end("the agent is stopping")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
