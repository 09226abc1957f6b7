"""What the in-guest agent does for each request: execute, put, get, freeze, thaw and more.

Standard library only. A handler owns one request id. ``start`` runs it (in
its own thread when it waits on anything); ``feed`` takes the PUT_DATA and
PUT_END frames of a put; ``cancel`` abandons it (kills the command, stops
sending, deletes the partial file). Handlers answer through ``send``, which
returns False once the host connection the request came on is gone; a
handler then stops quietly. Every handler ends with exactly one final frame
(EXIT, OK, GET_END or ERROR) unless its connection is gone, then calls
``on_done``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from guestagent.freeze import DEFAULT_TIMEOUT, FreezeError, Freezer
from guestagent.protocol import GUEST_FRAME_LIMIT, HEADER_SIZE, Frame, Kind, ProtocolError

CHUNK = GUEST_FRAME_LIMIT - HEADER_SIZE  # data per STDOUT/STDERR/GET_DATA frame: one write
OUTPUT_DRAIN_GRACE = 1.0  # seconds to keep reading pipes after the command exited
POLL_INTERVAL = 0.1

if TYPE_CHECKING:  # (a runtime alias would need Python 3.9)
    Send = Callable[[Frame], bool]


class Handler:
    """One request being served."""

    threaded = True

    def __init__(self, request_id: int, send: Send) -> None:
        self.request_id = request_id
        self._send = send
        self.cancelled = threading.Event()
        self.on_done: Callable[[Handler], None] = lambda handler: None
        self._finished = False
        self._finish_lock = threading.Lock()

    def send(self, kind: Kind, fields: dict[str, object] | None = None, data: bytes = b"") -> bool:
        """Send a frame for this request; False when the host connection is gone."""
        return self._send(Frame(kind, self.request_id, fields or {}, data))

    def finish(self, kind: Kind, fields: dict[str, object] | None = None) -> None:
        """Send the final frame (at most once) and leave the request table."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        self.send(kind, fields)
        self.on_done(self)

    def fail(self, message: str, retryable: bool = False) -> None:
        """End the request with an ERROR frame."""
        self.finish(Kind.ERROR, {"message": message, "retryable": retryable})

    def start(self) -> None:
        """Run the request, in a thread unless the handler says otherwise."""
        if not self.threaded:
            self._guarded_run()
            return
        name = f"{type(self).__name__}-{self.request_id}"
        threading.Thread(target=self._guarded_run, name=name, daemon=True).start()

    def _guarded_run(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a handler bug must not kill the agent
            self.fail(f"internal error in the guest agent: {type(exc).__name__}: {exc}")

    def run(self) -> None:
        """Do the work; implemented by each handler."""
        raise NotImplementedError

    def feed(self, frame: Frame) -> None:
        """Take a PUT_DATA or PUT_END frame (only puts expect them)."""
        self.fail(f"request {self.request_id} does not take {frame.kind.name} frames")

    def cancel(self) -> None:
        """Abandon the request."""
        self.cancelled.set()


class SystemStateHandler(Handler):
    """is-system-running: systemd's answer when systemd runs, else "running"."""

    def run(self) -> None:
        """Answer OK with the state."""
        self.finish(Kind.OK, {"state": system_state()})


def system_state() -> str:
    """What `systemctl is-system-running` says, or "running" without systemd."""
    if not os.path.isdir("/run/systemd/system"):
        return "running"  # no systemd: our init is up once it runs this agent
    try:
        result = subprocess.run(
            ["systemctl", "is-system-running"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


# The guest's one freezer: a freeze outlives its request (it is thawed by a later one).
FREEZER = Freezer()


class FreezeHandler(Handler):
    """freeze: sync, then freeze the writable local file systems until a thaw or ``timeout``.

    Runs on the reader thread (it is quick, and a freeze must not race the
    thaw that follows it); the freeze belongs to the session that asked, and
    ends when that session does.
    """

    threaded = False

    def __init__(self, request_id: int, send: Send, frame: Frame, owner: object = None) -> None:
        super().__init__(request_id, send)
        self.timeout = frame.float_field("timeout", DEFAULT_TIMEOUT)
        if not self.timeout > 0:
            raise ProtocolError("freeze timeout must be positive")
        self.owner = owner

    def run(self) -> None:
        """Answer OK with what was frozen and skipped, or ERROR."""
        try:
            fields = FREEZER.freeze(self.timeout, self.owner)
        except FreezeError as exc:
            self.fail(str(exc))
            return
        self.finish(Kind.OK, fields)


class ThawHandler(Handler):
    """thaw: thaw what a freeze froze (nothing frozen is fine: an empty list)."""

    threaded = False

    def run(self) -> None:
        """Answer OK with the mount points thawed."""
        self.finish(Kind.OK, FREEZER.thaw())


class ExecuteHandler(Handler):
    """execute: run a command line with /bin/sh -c, streaming its output."""

    def __init__(self, request_id: int, send: Send, frame: Frame) -> None:
        super().__init__(request_id, send)
        self.command = frame.str_field("command")
        self.cwd = frame.str_field("cwd") if frame.fields.get("cwd") is not None else None
        self.timeout = (
            frame.float_field("timeout") if frame.fields.get("timeout") is not None else None
        )
        if self.timeout is not None and self.timeout <= 0:
            raise ProtocolError("execute timeout must be positive")
        env = frame.fields.get("env")
        self.env: dict[str, str] = {}
        if env is not None:
            if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()
            ):
                raise ProtocolError("execute env must map strings to strings")
            self.env = env

    process: subprocess.Popen[bytes] | None = None

    def cancel(self) -> None:
        """Kill the command at once; the relay thread then answers "cancelled"."""
        super().cancel()
        if self.process is not None and self.process.returncode is None:
            kill_group(self.process)

    def run(self) -> None:
        """Start the command, relay its output, then report how it ended."""
        try:
            env = {**os.environ, **self.env}
            self.process = process = subprocess.Popen(
                argv_for(self.command, env.get("PATH", os.defpath)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError) as exc:
            where = f" in {self.cwd}" if self.cwd else ""
            self.fail(f"cannot run the command{where}: {exc}")
            return
        try:
            self._relay(process)
        finally:
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
            if process.poll() is None:
                kill_group(process)
                process.wait()

    def _relay(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None and process.stderr is not None
        kinds = {process.stdout.fileno(): Kind.STDOUT, process.stderr.fileno(): Kind.STDERR}
        poller = select.poll()
        for fd in kinds:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        open_fds = set(kinds)
        deadline = time.monotonic() + self.timeout if self.timeout is not None else None
        timed_out = False
        exited_at: float | None = None
        while True:
            if self.cancelled.is_set():
                kill_group(process)
                self.fail("cancelled")
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline and not timed_out:
                kill_group(process)
                timed_out = True
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and (not open_fds or now - exited_at > OUTPUT_DRAIN_GRACE):
                break  # exited, and its output is drained (or held open by a leftover child)
            wait = (
                POLL_INTERVAL if deadline is None else max(0.0, min(POLL_INTERVAL, deadline - now))
            )
            if not open_fds:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(wait)
                continue
            for fd, _event in poller.poll(wait * 1000):
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif not self.send(kinds[fd], data=chunk):
                    kill_group(process)
                    return  # the host is gone: nobody to tell
        return_code = process.wait()
        self.finish(Kind.EXIT, {"return_code": return_code, "timed_out": timed_out})


# Anything that makes a command line more than words for one program: the shell runs it.
SHELL_SYNTAX = frozenset("|&;<>()$`\\\"'*?[]#~={}!\n")


def argv_for(command: str, path: str) -> list[str]:
    """How to run a command line: a simple one directly, anything else with /bin/sh -c.

    "Simple" means plain words with no shell syntax whose first word is a
    program found on path (not a shell builtin such as cd or exit): running
    it directly does what the shell would, without starting a shell first
    (an exec saved is milliseconds in a slow guest). Everything else, and
    every command that is not found, goes through the shell as before.
    """
    words = command.split()
    if words and "/" not in words[0] and not SHELL_SYNTAX.intersection(command):
        program = shutil.which(words[0], path=path)
        if program is not None:
            return [program, *words[1:]]
    return ["/bin/sh", "-c", command]


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command and everything in its process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()


class GetHandler(Handler):
    """get: STAT, then the file in GET_DATA chunks, then GET_END."""

    def __init__(self, request_id: int, send: Send, frame: Frame) -> None:
        super().__init__(request_id, send)
        self.path = frame.str_field("path")
        if not os.path.isabs(self.path):
            raise ProtocolError(f"get path must be absolute, not {self.path!r}")

    def run(self) -> None:
        """Stream the file."""
        try:
            # O_NONBLOCK: opening a FIFO must not hang the request
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self.fail(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.fail(f"cannot read {self.path}: not a regular file")
                return
            os.set_blocking(fd, True)
            fields: dict[str, object] = {
                "size": info.st_size,
                "mode": stat.S_IMODE(info.st_mode),
                "mtime": info.st_mtime,
                "uid": info.st_uid,
                "gid": info.st_gid,
            }
            if not self.send(Kind.STAT, fields):
                return
            sent = 0
            while True:
                if self.cancelled.is_set():
                    self.fail("cancelled")
                    return
                try:
                    chunk = os.read(fd, CHUNK)
                except OSError as exc:
                    self.fail(f"reading {self.path} failed: {exc.strerror or exc}")
                    return
                if not chunk:
                    break
                if not self.send(Kind.GET_DATA, data=chunk):
                    return
                sent += len(chunk)
            self.finish(Kind.GET_END, {"size": sent})
        finally:
            os.close(fd)


class PutHandler(Handler):
    """put: data into a temporary file beside the target, then fsync, chmod, rename.

    The frames arrive on the reader thread and are written there (writes to a
    regular file do not block for long); the final fsync and rename run in a
    thread of their own.
    """

    threaded = False

    def __init__(self, request_id: int, send: Send, frame: Frame) -> None:
        super().__init__(request_id, send)
        self.path = frame.str_field("path")
        self.mode = frame.int_field("mode", 0o644)
        if not os.path.isabs(self.path) or self.path.endswith("/"):
            raise ProtocolError(f"put path must be an absolute file path, not {self.path!r}")
        if not 0 <= self.mode <= 0o7777:
            raise ProtocolError(f"put mode {self.mode:o} is not a permission mode")
        self.fd: int | None = None
        self.ended = False
        self.temporary = ""
        self.size = 0
        self.lock = threading.RLock()  # cancel() may interrupt feed() on the same thread

    def run(self) -> None:
        """Create the temporary file, or fail at once."""
        folder, name = os.path.split(self.path)
        if os.path.isdir(self.path):
            self.fail(f"cannot write {self.path}: it is a directory")
            return
        try:
            self.fd, self.temporary = tempfile.mkstemp(
                prefix=f".{name}.", suffix=".part", dir=folder
            )
        except OSError as exc:
            self.fail(f"cannot write {self.path}: {exc.strerror or exc}")

    def feed(self, frame: Frame) -> None:
        """Write a chunk, or complete the file on PUT_END."""
        with self.lock:
            if self.fd is None or self.ended:
                return  # failed, cancelled or complete already: drop the rest
            if frame.kind == Kind.PUT_END:
                self.ended = True
            elif frame.kind == Kind.PUT_DATA:
                try:
                    view = memoryview(frame.data)
                    while view:
                        view = view[os.write(self.fd, view) :]
                except OSError as exc:
                    self._discard()
                    self.fail(f"writing {self.path} failed: {exc.strerror or exc}")
                    return
                self.size += len(frame.data)
                return
        if frame.kind == Kind.PUT_END:
            name = f"put-{self.request_id}"
            threading.Thread(target=self._complete, name=name, daemon=True).start()
        else:
            super().feed(frame)

    def _complete(self) -> None:
        with self.lock:
            if self.fd is None:
                return
            try:
                os.fchmod(self.fd, self.mode)
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = None
                os.replace(self.temporary, self.path)
            except OSError as exc:
                self._discard()
                self.fail(f"completing {self.path} failed: {exc.strerror or exc}")
                return
            sync_folder(os.path.dirname(self.path))
        self.finish(Kind.OK, {"size": self.size})

    def _discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.temporary:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)

    def cancel(self) -> None:
        """Delete the partial file and answer "cancelled"."""
        super().cancel()
        with self.lock:
            if self.fd is None:
                return
            self._discard()
        self.fail("cancelled")


def sync_folder(folder: str) -> None:
    """fsync a directory so that a rename in it is durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


OPS: dict[str, Callable[[int, Send, Frame], Handler]] = {
    "execute": ExecuteHandler,
    "put": PutHandler,
    "get": GetHandler,
    "is-system-running": lambda request_id, send, _frame: SystemStateHandler(request_id, send),
    "freeze": FreezeHandler,
    "thaw": lambda request_id, send, _frame: ThawHandler(request_id, send),
}
