"""Benchmark: agent operations through minicloud vs qemu-guest-agent vs the raw channel.

    .venv/bin/python tools/bench_agent.py --diagnose   # 30 execs, 5 x 64 MiB: about 4 minutes
    .venv/bin/python tools/bench_agent.py --quick      # 10 execs, 2 x 16 MiB: under a minute

One cluster (``tools/cluster.py``: image server, control plane and node agent
as processes) and ONE instance (1 vCPU, 512 MiB, side channels ``sf-agent``
and ``raw-bench``) serve every measurement, so all three paths talk to the
same guest:

* **minicloud**: the public gRPC API (``client.api.Client``) → control plane
  → node stream → node agent → ``sf-agent`` virtio-serial port → the
  in-guest agent (and blobs through the BlobService for files);
* **qemu-guest-agent**: ``libvirt_qemu.qemuAgentCommand`` on
  ``qemu:///system`` (libvirtd → QEMU → the ``org.qemu.guest_agent.0`` port →
  qemu-ga), the way a libvirt-based cloud reaches qemu-ga;
* **raw channel**: this process reads and writes the ``raw-bench`` port's
  host socket directly while ``head``/``cat`` move the bytes in the guest
  (started in the background by an untimed minicloud Execute; clocks start
  and stop on marker bytes seen on the socket): the ceiling of any agent on
  a virtio-serial port.

Measured (medians; the paths take turns in every round so machine load hits
them alike; a warm-up round comes first):

1. round trip of ``true``: minicloud Execute then GetAgentOperation polling
   until complete, minicloud ExecuteStream (returns when done), and qemu-ga
   guest-exec of /bin/true then guest-exec-status polling until exited;
   both polls sleep ``--poll`` seconds between calls (goal: ours ≤ 0.5x);
2. a fresh random file of ``--size-mib`` MiB into and out of the guest each
   round: minicloud upload blob + Put until complete (and the Put op alone),
   Get until complete + blob download (sha512 checked; and the Get op
   alone); qemu-ga guest-file-open/write (base64, ``--qga-write-kib`` per
   command: libvirt 9.0 hangs on commands over ~200 KB)/close and
   guest-file-read (``--qga-read-kib``); the raw channel both ways (content
   checked), into the guest also with the file fsynced, since a minicloud
   Put fsyncs. Goals: ours ≥ 3x qemu-ga and ≥ 50 % of the raw channel.

Prints Markdown tables (figures, goals, CPU per operation by process) and one
JSON line; ``--out FILE`` writes the JSON too. ``--diagnose`` then measures
each stage alone (raw channel to /dev/null, the guest agent's own put and get
code on the raw port at full speed, BlobService uploads by message size,
process spawning inside the guest). ``--profile DIR`` adds one extra,
untimed put and get with py-spy sampling the node agent and the control
plane (``.venv/bin/pip install py-spy``) and prints their top frames.
Needs root, libvirtd and the guest image (``tools/build_guest_image.py``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt_qemu  # type: ignore[import-untyped]

from client.api import Client, JsonDict
from guestagent.protocol import Decoder, Frame, Kind, encode
from tools.cluster import Cluster, build_guest_image, wait_until

MEMORY_MB = 512
DISK_GB = 3
RAW_CHANNEL = "raw-bench"
UPLOAD_CHUNK = 1024 * 1024
FINISHED = ("complete", "error", "deleted")
MB = 1_000_000  # throughput in MB/s (10^6 bytes), as in the machine notes
OURS_FILE, QGA_FILE, RAW_FILE = "/root/bench-ours.bin", "/root/bench-qga.bin", "/root/bench-raw.bin"
TRANSFER_POLL = 0.02  # seconds between GetAgentOperation calls while a file moves
QGA_TIMEOUT = 120  # seconds libvirt waits for one qemu-ga answer


# ---------------------------------------------------------------------------
# Processes and their CPU time.


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of_comm(name: str) -> int:
    """The first process whose command name is ``name`` (0 if none)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == name:
                return int(comm.parent.name)
    return 0


def qemu_pid(uuid: str) -> int:
    """The QEMU process running the instance's domain."""
    pidfile = Path(f"/run/libvirt/qemu/mc-{uuid}.pid")
    with contextlib.suppress(OSError, ValueError):
        return int(pidfile.read_text().strip())
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if f"guest=mc-{uuid}".encode() in cmdline.read_bytes():
                return int(cmdline.parent.name)
    return 0


def qemu_processes() -> int:
    """How many QEMU processes run (other engineers' tests share the machine)."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith("qemu"):
                count += 1
    return count


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class CpuMeter:
    """CPU seconds used by the processes on the path, summed per measured operation."""

    pids: dict[str, int]
    totals: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    @contextlib.contextmanager
    def measure(self, what: str) -> Iterator[None]:
        """Add the CPU the processes use during the block to ``what``."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        yield
        after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        total = self.totals.setdefault(what, dict.fromkeys(self.pids, 0.0))
        for name in self.pids:
            total[name] += after[name] - before[name]
        self.counts[what] += 1

    def per_operation(self) -> dict[str, dict[str, float]]:
        """Mean CPU milliseconds per operation, per process."""
        return {
            what: {name: round(1000 * total[name] / self.counts[what], 1) for name in self.pids}
            for what, total in self.totals.items()
        }


# ---------------------------------------------------------------------------
# The three paths.


class QemuGuestAgent:
    """qemu-ga through libvirt's agent-command API (qemu:///system)."""

    def __init__(self, uuid: str) -> None:
        self.conn = libvirt.open("qemu:///system")
        self.dom = self.conn.lookupByName(f"mc-{uuid}")

    def close(self) -> None:
        """Close the libvirt connection."""
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()

    def call(self, command: str, arguments: JsonDict | None = None) -> Any:
        """Run one qemu-ga command; returns its "return" value."""
        message: JsonDict = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(message), QGA_TIMEOUT, 0)
        return json.loads(reply)["return"]

    def wait_ready(self, timeout: float) -> None:
        """Wait until qemu-ga answers guest-ping."""

        def answers() -> bool:
            try:
                self.call("guest-ping")
                return True
            except libvirt.libvirtError:
                return False

        wait_until(answers, timeout, "qemu-ga to answer guest-ping", poll=0.5)

    def exec_true(self, poll: float) -> float:
        """Seconds for guest-exec of /bin/true plus guest-exec-status until it exited."""
        started = time.perf_counter()
        pid = self.call("guest-exec", {"path": "/bin/true", "capture-output": True})["pid"]
        while True:
            status = self.call("guest-exec-status", {"pid": pid})
            if status["exited"]:
                break
            if poll:
                time.sleep(poll)
        elapsed = time.perf_counter() - started
        if status.get("exitcode") != 0:
            raise AssertionError(f"qemu-ga: /bin/true ended with {status}")
        return elapsed

    def write_file(self, path: str, data: bytes, chunk: int) -> float:
        """Seconds to write data to a guest file: open, base64 writes of chunk bytes, close."""
        started = time.perf_counter()
        handle = self.call("guest-file-open", {"path": path, "mode": "w"})
        view = memoryview(data)
        for offset in range(0, len(data), chunk):
            piece = base64.b64encode(view[offset : offset + chunk]).decode("ascii")
            written = self.call("guest-file-write", {"handle": handle, "buf-b64": piece})
            if written["count"] != min(chunk, len(data) - offset):
                raise AssertionError(f"qemu-ga wrote {written} at offset {offset}")
        self.call("guest-file-close", {"handle": handle})
        return time.perf_counter() - started

    def read_file(self, path: str, chunk: int) -> tuple[float, bytes]:
        """Seconds to read a guest file in chunks of chunk bytes, and its content."""
        started = time.perf_counter()
        handle = self.call("guest-file-open", {"path": path, "mode": "r"})
        parts: list[bytes] = []
        while True:
            answer = self.call("guest-file-read", {"handle": handle, "count": chunk})
            parts.append(base64.b64decode(answer["buf-b64"]))
            if answer["eof"] or answer["count"] == 0:
                break
        self.call("guest-file-close", {"handle": handle})
        return time.perf_counter() - started, b"".join(parts)


class RawChannel:
    """The raw-bench virtio-serial port: this process on the host socket, head/cat in the guest.

    The guest side is a background shell started through a minicloud Execute
    (not timed). It opens the port once (``exec 3<>``: opening and closing it
    between steps could drop bytes in flight) and writes one-line markers on
    it, so every clock here starts and stops on bytes seen on the socket.
    """

    def __init__(self, path: Path, device: str) -> None:
        self.device = device
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self.pending = bytearray()  # bytes received beyond the last marker

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def expect(self, marker: bytes, timeout: float = 120) -> float:
        """Wait for marker (the next bytes on the socket); the time it arrived."""
        deadline = time.monotonic() + timeout
        while len(self.pending) < len(marker):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise TimeoutError(f"raw channel: no {marker!r} within {timeout} s")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("raw channel: the socket closed")
            self.pending += data
        arrived = time.perf_counter()
        if bytes(self.pending[: len(marker)]) != marker:
            raise AssertionError(f"raw channel: expected {marker!r}, got {self.pending[:32]!r}")
        del self.pending[: len(marker)]
        return arrived

    def into_guest(
        self, start: Callable[[str], object], data: bytes, target: str = RAW_FILE
    ) -> tuple[float, float]:
        """Seconds until the guest has written all of data to target (and after its fsync)."""
        if self.pending:
            raise AssertionError(f"raw channel: stray bytes {self.pending[:32]!r}")
        sync = "true" if target == "/dev/null" else f"sync {target}"
        start(
            f"( exec 3<>{self.device}; echo R >&3; head -c {len(data)} <&3 > {target}; "
            f"echo D >&3; {sync}; echo S >&3 ) >/dev/null 2>&1 &"
        )
        self.expect(b"R\n")
        started = time.perf_counter()
        self.sock.sendall(data)
        landed = self.expect(b"D\n")
        synced = self.expect(b"S\n")
        return landed - started, synced - started

    def out_of_guest(self, start: Callable[[str], object], size: int) -> tuple[float, bytes]:
        """Seconds for size bytes of the guest's file to arrive here, and the bytes.

        The clock starts at the first data bytes, not at the marker, so the
        guest's start-up of ``cat`` (about 20 ms under TCG) is not counted:
        the time is scaled from the bytes after the first read to all of them.
        """
        if self.pending:
            raise AssertionError(f"raw channel: stray bytes {self.pending[:32]!r}")
        # The guest keeps the port open until acked: closing it with bytes
        # still queued in QEMU could lose the tail.
        start(
            f"( exec 3<>{self.device}; echo R >&3; cat {RAW_FILE} >&3; "
            f"head -c 1 <&3 >/dev/null ) >/dev/null 2>&1 &"
        )
        self.expect(b"R\n")
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = len(self.pending)
        if got > size:
            raise AssertionError("raw channel: the guest sent more than the file")
        view[:got] = self.pending
        self.pending.clear()
        started, first = time.perf_counter(), got
        self.sock.settimeout(120)
        try:
            while got < size:
                received = self.sock.recv_into(view[got:], min(size - got, 4 * 1024 * 1024))
                if not received:
                    raise ConnectionError("raw channel: the socket closed")
                if got == 0:
                    started, first = time.perf_counter(), received
                got += received
        finally:
            self.sock.settimeout(None)
        elapsed = (time.perf_counter() - started) * size / max(size - first, 1)
        self.sock.sendall(b"A")
        return elapsed, bytes(buffer)


@dataclass
class Minicloud:
    """Agent operations through the public gRPC API."""

    api: Client
    uuid: str

    def wait(self, op: JsonDict, poll: float, timeout: float = 600) -> JsonDict:
        """Poll GetAgentOperation until the operation finished; fail unless complete."""
        deadline = time.monotonic() + timeout
        while op["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent operation {op['uuid']} still {op['state']}")
            if poll:
                time.sleep(poll)
            op = self.api.agent_operation(op["uuid"])
        if op["state"] != "complete":
            raise AssertionError(f"agent operation failed: {op}")
        return op

    def run(self, command: str) -> JsonDict:
        """Execute a command and wait for it (not timed); returns result "0"."""
        op = self.wait(self.api.execute(self.uuid, command), TRANSFER_POLL)
        result: JsonDict = op["results"]["0"]
        if result["return-code"] != 0:
            raise AssertionError(f"{command!r} failed in the guest: {result}")
        return result

    def exec_poll(self, poll: float) -> float:
        """Seconds for Execute of `true` plus GetAgentOperation polling until complete."""
        started = time.perf_counter()
        op = self.wait(self.api.execute(self.uuid, "true"), poll)
        elapsed = time.perf_counter() - started
        if op["results"]["0"]["return-code"] != 0:
            raise AssertionError(f"true failed: {op}")
        return elapsed

    def exec_stream(self) -> float:
        """Seconds for ExecuteStream of `true` (it returns once the command is done)."""
        started = time.perf_counter()
        final = self.api.execute_stream(self.uuid, "true", lambda _stream, _data: None)
        elapsed = time.perf_counter() - started
        if final.get("state") != "complete" or final["results"]["0"]["return-code"] != 0:
            raise AssertionError(f"ExecuteStream of true: {final}")
        return elapsed

    def put(self, data: bytes, path: str) -> tuple[float, float]:
        """Seconds for upload blob + Put until complete, and for the Put op alone."""
        view = memoryview(data)
        started = time.perf_counter()
        blob = self.api.upload_blob(
            bytes(view[i : i + UPLOAD_CHUNK]) for i in range(0, len(data), UPLOAD_CHUNK)
        )
        uploaded = time.perf_counter()
        self.wait(self.api.put_blob(self.uuid, blob["uuid"], path, 0o100600), TRANSFER_POLL)
        done = time.perf_counter()
        if int(blob["size"]) != len(data):
            raise AssertionError(f"blob of {blob['size']} bytes, {len(data)} sent")
        return done - started, done - uploaded

    def get(self, path: str) -> tuple[float, float, bytes]:
        """Seconds for Get until complete + blob download, for the Get op alone, and the bytes."""
        started = time.perf_counter()
        op = self.wait(self.api.get_file(self.uuid, path), TRANSFER_POLL)
        stored = time.perf_counter()
        data = b"".join(self.api.download_blob(op["results"]["0"]["content_blob"]))
        return time.perf_counter() - started, stored - started, data


# ---------------------------------------------------------------------------
# The benchmark.


@dataclass
class Plan:
    """What to measure and how often."""

    exec_runs: int
    transfer_runs: int
    size: int
    poll: float
    qga_write_chunk: int
    qga_read_chunk: int


@dataclass
class Samples:
    """Every measured figure, in seconds, by name."""

    values: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, name: str, seconds: float) -> None:
        self.values[name].append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])


def sha512(data: bytes) -> str:
    """The hex sha512 of data."""
    return hashlib.sha512(data).hexdigest()


def find_port(ours: Minicloud, name: str) -> str:
    """The guest's /dev/vportNpM for the virtio-serial port with that name."""
    listing = ours.run("grep -H . /sys/class/virtio-ports/*/name")["stdout"]
    for line in listing.splitlines():
        where, _, port = line.partition(":")
        if port.strip() == name:
            return "/dev/" + Path(where).parent.name
    raise AssertionError(f"no virtio port named {name!r} in the guest: {listing!r}")


def measure_exec(
    plan: Plan, ours: Minicloud, qga: QemuGuestAgent, samples: Samples, cpu: CpuMeter
) -> None:
    """1. Round trips of `true`, the three ways in turn."""
    for _ in range(3):  # warm-up
        ours.exec_poll(plan.poll)
        ours.exec_stream()
        qga.exec_true(plan.poll)
    for run in range(plan.exec_runs):
        with cpu.measure("exec: minicloud Execute + poll"):
            samples.add("exec_ours_poll", ours.exec_poll(plan.poll))
        with cpu.measure("exec: minicloud ExecuteStream"):
            samples.add("exec_ours_stream", ours.exec_stream())
        with cpu.measure("exec: qemu-ga guest-exec + status"):
            samples.add("exec_qga", qga.exec_true(plan.poll))
        if (run + 1) % 10 == 0:
            print(
                f"exec {run + 1}/{plan.exec_runs}: "
                f"poll {1000 * samples.median('exec_ours_poll'):.1f} ms, "
                f"stream {1000 * samples.median('exec_ours_stream'):.1f} ms, "
                f"qemu-ga {1000 * samples.median('exec_qga'):.1f} ms (medians so far)",
                flush=True,
            )


def transfer_round(
    plan: Plan,
    ours: Minicloud,
    qga: QemuGuestAgent,
    raw: RawChannel,
    data: bytes,
    samples: Samples | None,
    cpu: CpuMeter | None,
) -> None:
    """One file each way along each path (recorded unless samples is None)."""
    digest = sha512(data)

    def record(name: str, seconds: float) -> None:
        if samples is not None:
            samples.add(name, seconds)

    def measured(what: str) -> contextlib.AbstractContextManager[None]:
        return cpu.measure(what) if cpu is not None else contextlib.nullcontext()

    def start(command: str) -> None:
        ours.run(command)

    with measured("put: minicloud upload + Put"):
        whole, alone = ours.put(data, OURS_FILE)
    record("put_ours", whole)
    record("put_ours_op", alone)
    with measured("get: minicloud Get + download"):
        whole, alone, back = ours.get(OURS_FILE)
    record("get_ours", whole)
    record("get_ours_op", alone)
    if sha512(back) != digest:
        raise AssertionError("minicloud: the file came back different (sha512)")

    with measured("put: qemu-ga file-write"):
        record("put_qga", qga.write_file(QGA_FILE, data, plan.qga_write_chunk))
    with measured("get: qemu-ga file-read"):
        seconds, back = qga.read_file(QGA_FILE, plan.qga_read_chunk)
    record("get_qga", seconds)
    if back != data:
        raise AssertionError("qemu-ga: the file came back different")

    with measured("put: raw channel"):
        landed, synced = raw.into_guest(start, data)
    record("put_raw", landed)
    record("put_raw_fsync", synced)
    with measured("get: raw channel"):
        seconds, back = raw.out_of_guest(start, len(data))
    record("get_raw", seconds)
    if back != data:
        raise AssertionError("raw channel: the file came back different")
    ours.run(f"rm -f {OURS_FILE} {QGA_FILE} {RAW_FILE}")


def measure_transfers(
    plan: Plan,
    ours: Minicloud,
    qga: QemuGuestAgent,
    raw: RawChannel,
    samples: Samples,
    cpu: CpuMeter,
) -> None:
    """2. Files in and out, each path in turn, fresh random content each round."""
    transfer_round(plan, ours, qga, raw, os.urandom(1024 * 1024), None, None)  # warm-up
    for run in range(plan.transfer_runs):
        transfer_round(plan, ours, qga, raw, os.urandom(plan.size), samples, cpu)
        mbps = {
            k: plan.size / MB / v[-1]
            for k, v in samples.values.items()
            if k.startswith(("put_", "get_"))
        }
        print(
            f"transfer {run + 1}/{plan.transfer_runs} ({plan.size // 2**20} MiB, MB/s): "
            f"put ours {mbps['put_ours']:.1f} (op {mbps['put_ours_op']:.1f}), "
            f"qemu-ga {mbps['put_qga']:.1f}, raw {mbps['put_raw']:.1f}; "
            f"get ours {mbps['get_ours']:.1f} (op {mbps['get_ours_op']:.1f}), "
            f"qemu-ga {mbps['get_qga']:.1f}, raw {mbps['get_raw']:.1f}",
            flush=True,
        )


# ---------------------------------------------------------------------------
# Diagnostics (optional): the floor of each stage, to tell where the time goes.

GUEST_LIB = "/usr/local/lib/minicloud"  # where the image keeps the guest agent's package

SPAWN_SCRIPT = """
import json, os, statistics, subprocess, time
def popen(argv, **kw):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True, env=dict(os.environ), **kw)
def median_ms(step, runs=RUNS):
    times = []
    for _ in range(runs):
        times.append(step())
    return round(1000 * statistics.median(times), 2)
def timed(action):
    def step():
        started = time.perf_counter()
        action()
        return time.perf_counter() - started
    return step
def warm_shell():
    shell = popen(["/bin/sh", "-s"], stdin=subprocess.PIPE)  # spawned ahead, while idle
    time.sleep(0.05)
    started = time.perf_counter()
    shell.communicate(b"true\\n")
    return time.perf_counter() - started
print(json.dumps({
    "popen_sh_c_true_ms": median_ms(timed(
        lambda: popen(["/bin/sh", "-c", "true"], stdin=subprocess.DEVNULL).communicate())),
    "popen_bin_true_ms": median_ms(timed(
        lambda: popen(["/bin/true"], stdin=subprocess.DEVNULL).communicate())),
    "posix_spawn_bin_true_ms": median_ms(timed(
        lambda: os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], os.environ), 0))),
    "warm_shell_true_ms": median_ms(warm_shell),
}))
"""

# The guest agent's own reading path (VirtioPort + Decoder + file writes, as a
# put does), fed PUT_DATA frames by this process at full speed on raw-bench.
AGENT_PUT_SCRIPT = """
import os, sys
sys.path.insert(0, GUEST_LIB)
from guestagent.serve import VirtioPort
from guestagent.protocol import Decoder
port = VirtioPort(DEVICE)
out = os.open(TARGET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
port.write(b"R\\n")
decoder, got = Decoder(), 0
while got < SIZE:
    data = port.read()
    if data is None:
        raise SystemExit("the host went away")
    for frame in decoder.feed(data):
        view = memoryview(frame.data)
        while view:
            view = view[os.write(out, view):]
        got += len(frame.data)
os.fsync(out)
os.close(out)
port.write(b"D\\n")
"""

# The guest agent's own GetHandler sending a file on raw-bench; this process decodes.
AGENT_GET_SCRIPT = """
import sys
sys.path.insert(0, GUEST_LIB)
from guestagent.serve import VirtioPort
from guestagent.handlers import GetHandler
from guestagent.protocol import Frame, Kind, encode
port = VirtioPort(DEVICE)
port.write(b"R\\n")
def send(frame):
    port.write(encode(frame))
    return True
GetHandler(1, send, Frame(Kind.REQUEST, 1, {"op": "get", "path": TARGET})).run()
port.read()  # the host's ack
"""


def guest_python(script: str, **values: object) -> str:
    """A shell command running script with python3 in the guest, constants set first."""
    prologue = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    return f"python3 - <<'PYEOF'\n{prologue}{script}\nPYEOF"


def diagnose(
    plan: Plan, ours: Minicloud, raw: RawChannel, pids: dict[str, int], runs: int = 3
) -> JsonDict:
    """Floors: raw channel to /dev/null, the guest agent's put/get paths alone, blob
    uploads by message size, and process spawning in the guest."""
    size = plan.size
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    cp_cpu: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(runs):
        data = os.urandom(size)
        landed, _ = raw.into_guest(ours.run, data, "/dev/null")
        seconds["raw_in_devnull"].append(landed)

        frames = b"".join(
            encode(Frame(Kind.PUT_DATA, 1, {}, data[i : i + 2**20])) for i in range(0, size, 2**20)
        )
        ours.api.execute(
            ours.uuid,
            guest_python(
                AGENT_PUT_SCRIPT,
                GUEST_LIB=GUEST_LIB,
                DEVICE=raw.device,
                TARGET=RAW_FILE,
                SIZE=size,
            ),
        )
        raw.expect(b"R\n")
        started = time.perf_counter()
        raw.sock.sendall(frames)
        seconds["agent_put_path_alone_fsync"].append(raw.expect(b"D\n") - started)

        ours.api.execute(
            ours.uuid,
            guest_python(AGENT_GET_SCRIPT, GUEST_LIB=GUEST_LIB, DEVICE=raw.device, TARGET=RAW_FILE),
        )
        started = raw.expect(b"R\n")
        decoder, received, finished = Decoder(), 0, False
        pending, raw.pending = bytes(raw.pending), bytearray()
        raw.sock.settimeout(120)
        try:
            while not finished:
                for frame in decoder.feed(pending or raw.sock.recv(1 << 20)):
                    received += len(frame.data)
                    finished = frame.kind == Kind.GET_END
                pending = b""
        finally:
            raw.sock.settimeout(None)
        seconds["agent_get_path_alone"].append(time.perf_counter() - started)
        raw.sock.sendall(b"A")
        if received != size:
            raise AssertionError(f"GetHandler sent {received} bytes of {size}")
        ours.run(f"rm -f {RAW_FILE}")

        for name, chunk in (("upload_32k_messages", 32 * 1024 - 16), ("upload_1m_messages", 2**20)):
            before = cpu_seconds(pids["controlplane"])
            started = time.perf_counter()
            ours.api.upload_blob(data[i : i + chunk] for i in range(0, size, chunk))
            seconds[name].append(time.perf_counter() - started)
            cp_cpu[name].append(cpu_seconds(pids["controlplane"]) - before)
    spawn = json.loads(ours.run(guest_python(SPAWN_SCRIPT, RUNS=20))["stdout"])
    mbps = {name: round(size / MB / statistics.median(v), 1) for name, v in seconds.items()}
    return {
        "mbps": mbps,
        "runs_s": {name: [round(x, 3) for x in v] for name, v in seconds.items()},
        "controlplane_cpu_ms": {
            name: round(1000 * statistics.median(v), 1) for name, v in cp_cpu.items()
        },
        "guest_spawn_ms": spawn,
    }


# ---------------------------------------------------------------------------
# Profiling (optional).


@contextlib.contextmanager
def py_spy(pids: dict[str, int], folder: Path | None, tag: str) -> Iterator[dict[str, Path]]:
    """Sample the processes with py-spy (all threads) into raw collapsed-stack files."""
    binary = Path(sys.executable).parent / "py-spy"
    if folder is None or not binary.exists():
        yield {}
        return
    folder.mkdir(parents=True, exist_ok=True)
    spies: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, Path] = {}
    for name, pid in pids.items():
        out = folder / f"{tag}-{name}.txt"
        outputs[name] = out
        command = [str(binary), "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        command += ["--format", "raw", "--output", str(out)]
        with (folder / f"{tag}-{name}.log").open("wb") as log:
            spies.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        time.sleep(1.0)  # let them attach
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)


def hotspots(collapsed: Path, top: int = 15) -> JsonDict:
    """Self and inclusive sample shares per frame from a py-spy raw profile."""
    if not collapsed.exists():
        return {}
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / max(total, 1), 1)) for f, n in counter.most_common(top)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}


def profile_transfers(
    plan: Plan, ours: Minicloud, pids: dict[str, int], folder: Path
) -> dict[str, JsonDict]:
    """One extra put and get under py-spy (not part of the figures); top frames per process."""
    data = os.urandom(plan.size)
    profiles: dict[str, JsonDict] = {}
    targets = {name: pids[name] for name in ("nodeagent", "controlplane")}
    with py_spy(targets, folder, "put") as outputs:
        ours.put(data, OURS_FILE)
    for name, path in outputs.items():
        profiles[f"put/{name}"] = hotspots(path)
    with py_spy(targets, folder, "get") as outputs:
        _, _, back = ours.get(OURS_FILE)
    for name, path in outputs.items():
        profiles[f"get/{name}"] = hotspots(path)
    if back != data:
        raise AssertionError("minicloud: the profiled file came back different")
    ours.run(f"rm -f {OURS_FILE}")
    return profiles


# ---------------------------------------------------------------------------
# Results.


def summarise(plan: Plan, samples: Samples, cpu: CpuMeter, env: JsonDict) -> JsonDict:
    """Medians, throughputs and ratios as one JSON-able dict."""
    ms = {
        name: round(1000 * samples.median(name), 2)
        for name in ("exec_ours_poll", "exec_ours_stream", "exec_qga")
    }
    seconds = {
        name: round(samples.median(name), 3)
        for name in samples.values
        if name.startswith(("put_", "get_"))
    }
    mbps = {name: round(plan.size / MB / samples.median(name), 1) for name in seconds}
    ratios = {
        "exec_poll_vs_qga": round(ms["exec_ours_poll"] / ms["exec_qga"], 3),
        "exec_stream_vs_qga": round(ms["exec_ours_stream"] / ms["exec_qga"], 3),
        "put_vs_qga": round(mbps["put_ours"] / mbps["put_qga"], 2),
        "put_op_vs_qga": round(mbps["put_ours_op"] / mbps["put_qga"], 2),
        "get_vs_qga": round(mbps["get_ours"] / mbps["get_qga"], 2),
        "get_op_vs_qga": round(mbps["get_ours_op"] / mbps["get_qga"], 2),
        "put_vs_raw": round(mbps["put_ours"] / mbps["put_raw"], 3),
        "put_op_vs_raw": round(mbps["put_ours_op"] / mbps["put_raw"], 3),
        "put_vs_raw_fsync": round(mbps["put_ours"] / mbps["put_raw_fsync"], 3),
        "get_vs_raw": round(mbps["get_ours"] / mbps["get_raw"], 3),
        "get_op_vs_raw": round(mbps["get_ours_op"] / mbps["get_raw"], 3),
    }
    return {
        "environment": env,
        "plan": {
            "exec_runs": plan.exec_runs,
            "transfer_runs": plan.transfer_runs,
            "size_bytes": plan.size,
            "poll_s": plan.poll,
            "qga_write_chunk": plan.qga_write_chunk,
            "qga_read_chunk": plan.qga_read_chunk,
        },
        "exec_median_ms": ms,
        "transfer_median_s": seconds,
        "transfer_median_mbps": mbps,
        "ratios": ratios,
        "cpu_ms_per_op": cpu.per_operation(),
        "runs_s": {name: [round(v, 4) for v in values] for name, values in samples.values.items()},
    }


def verdict(value: float, goal: float, higher_is_better: bool) -> str:
    """met / missed."""
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "**missed**"


def print_report(result: JsonDict) -> None:
    """The Markdown tables."""
    env, plan = result["environment"], result["plan"]
    ms, mbps, secs = (
        result["exec_median_ms"],
        result["transfer_median_mbps"],
        result["transfer_median_s"],
    )
    runs, ratios = result["runs_s"], result["ratios"]
    mib = plan["size_bytes"] // 2**20
    print()
    print(
        f"{env['cpus']} CPUs, Python {env['python']}, grpcio {env['grpc']}, libvirt "
        f"{env['libvirt']}; load {env['loadavg_start']} -> {env['loadavg_end']}; QEMU processes "
        f"{env['qemu_processes_start']} -> {env['qemu_processes_end']}; run took "
        f"{env['seconds']} s"
    )
    print()
    print(f"Round trip of `true` ({plan['exec_runs']} runs, poll every {plan['poll_s']} s):")
    print()
    print("| path | median (ms) | min / max (ms) |")
    print("|---|---|---|")
    for name, label in (
        ("exec_ours_poll", "minicloud Execute + GetAgentOperation polling"),
        ("exec_ours_stream", "minicloud ExecuteStream"),
        ("exec_qga", "qemu-ga guest-exec + guest-exec-status polling (libvirt)"),
    ):
        values = runs[name]
        print(f"| {label} | {ms[name]} | {1000 * min(values):.1f} / {1000 * max(values):.1f} |")
    print()
    print(f"{mib} MiB of random bytes ({plan['transfer_runs']} runs; MB = 10^6 bytes):")
    print()
    print("| path | median (s) | MB/s | runs (s) |")
    print("|---|---|---|---|")
    rows = (
        ("put_ours", "into guest: minicloud upload blob + Put"),
        ("put_ours_op", "into guest: minicloud Put op alone (blob stored)"),
        ("put_qga", f"into guest: qemu-ga file-write ({plan['qga_write_chunk'] // 1024} KiB)"),
        ("put_raw", "into guest: raw channel (head > file)"),
        ("put_raw_fsync", "into guest: raw channel, file fsynced"),
        ("get_ours", "out of guest: minicloud Get + blob download"),
        ("get_ours_op", "out of guest: minicloud Get op alone (into a blob)"),
        ("get_qga", f"out of guest: qemu-ga file-read ({plan['qga_read_chunk'] // 1024} KiB)"),
        ("get_raw", "out of guest: raw channel (cat file; from its first byte)"),
    )
    for name, label in rows:
        values = [round(v, 3) for v in runs[name]]
        print(f"| {label} | {secs[name]} | {mbps[name]} | {values} |")
    print()
    print("| goal | figure | result |")
    print("|---|---|---|")
    goals = (
        ("exec: Execute + poll ≤ 0.5x qemu-ga", "exec_poll_vs_qga", 0.5, False),
        ("exec: ExecuteStream ≤ 0.5x qemu-ga", "exec_stream_vs_qga", 0.5, False),
        ("put: ours ≥ 3x qemu-ga (upload + Put)", "put_vs_qga", 3.0, True),
        ("put: ours ≥ 3x qemu-ga (Put op alone)", "put_op_vs_qga", 3.0, True),
        ("get: ours ≥ 3x qemu-ga (Get + download)", "get_vs_qga", 3.0, True),
        ("get: ours ≥ 3x qemu-ga (Get op alone)", "get_op_vs_qga", 3.0, True),
        ("put: ours ≥ 0.5x raw channel (upload + Put)", "put_vs_raw", 0.5, True),
        ("put: ours ≥ 0.5x raw channel (Put op alone)", "put_op_vs_raw", 0.5, True),
        ("put: ours ≥ 0.5x raw channel with fsync (upload + Put)", "put_vs_raw_fsync", 0.5, True),
        ("get: ours ≥ 0.5x raw channel (Get + download)", "get_vs_raw", 0.5, True),
        ("get: ours ≥ 0.5x raw channel (Get op alone)", "get_op_vs_raw", 0.5, True),
    )
    for label, key, goal, higher in goals:
        print(f"| {label} | {ratios[key]}x | {verdict(ratios[key], goal, higher)} |")
    print()
    cpu = result["cpu_ms_per_op"]
    names = list(next(iter(cpu.values())).keys()) if cpu else []
    print("CPU per operation (ms), by process:")
    print()
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for what, per in cpu.items():
        print(f"| {what} | " + " | ".join(str(per[n]) for n in names) + " |")
    diagnostics = result.get("diagnostics")
    if diagnostics:
        print_diagnostics(diagnostics, result)
    for name, profile in result.get("profiles", {}).items():
        if not profile:
            continue
        print(f"\n### py-spy: {name} ({profile['samples']} samples, all threads)")
        for kind in ("self", "inclusive"):
            print(f"\n{kind}:")
            for frame, share in profile[kind]:
                print(f"  {share:5.1f}%  {frame}")


def print_diagnostics(diagnostics: JsonDict, result: JsonDict) -> None:
    """The floors table (--diagnose)."""
    mbps, cp = diagnostics["mbps"], diagnostics["controlplane_cpu_ms"]
    main = result["transfer_median_mbps"]
    print()
    print("Floors (--diagnose; medians of 3, same size):")
    print()
    print("| stage measured alone | figure | compare with |")
    print("|---|---|---|")
    print(
        f"| raw channel into the guest, head > /dev/null | {mbps['raw_in_devnull']} MB/s | "
        f"head > file: {main['put_raw']} MB/s |"
    )
    print(
        f"| guest agent's put path alone (VirtioPort + Decoder + write + fsync), "
        f"fed PUT_DATA frames at full speed | {mbps['agent_put_path_alone_fsync']} MB/s | "
        f"raw + fsync {main['put_raw_fsync']} MB/s; minicloud Put op {main['put_ours_op']} MB/s |"
    )
    print(
        f"| guest agent's GetHandler alone, frames decoded here | "
        f"{mbps['agent_get_path_alone']} MB/s | raw {main['get_raw']} MB/s; minicloud Get op "
        f"{main['get_ours_op']} MB/s |"
    )
    print(
        f"| BlobService Upload in 32 KiB messages (as the node agent stores a Get) | "
        f"{mbps['upload_32k_messages']} MB/s, control plane CPU "
        f"{cp['upload_32k_messages']} ms | 1 MiB messages: {mbps['upload_1m_messages']} MB/s, "
        f"{cp['upload_1m_messages']} ms |"
    )
    spawn = diagnostics["guest_spawn_ms"]
    print(
        f"| in the guest: Python Popen of `sh -c true` (as the guest agent runs a command) | "
        f"{spawn['popen_sh_c_true_ms']} ms | Popen /bin/true {spawn['popen_bin_true_ms']} ms, "
        f"posix_spawn /bin/true {spawn['posix_spawn_bin_true_ms']} ms, `true` in a shell "
        f"spawned ahead {spawn['warm_shell_true_ms']} ms |"
    )


# ---------------------------------------------------------------------------
# Entry point.


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """The plan from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="16 MiB, 10 execs, 2 transfers")
    parser.add_argument("--runs", type=int, help="exec round trips per path (default 30)")
    parser.add_argument("--transfer-runs", type=int, help="transfers per path (default 5)")
    parser.add_argument("--size-mib", type=int, help="file size in MiB (default 64)")
    parser.add_argument(
        "--poll", type=float, default=0.001, help="seconds between status polls (both paths)"
    )
    parser.add_argument("--qga-write-kib", type=int, default=128, help="qemu-ga write chunk")
    parser.add_argument("--qga-read-kib", type=int, default=512, help="qemu-ga read chunk")
    parser.add_argument("--out", type=Path, help="also write the JSON results here")
    parser.add_argument("--profile", type=Path, help="py-spy one extra put/get into this folder")
    parser.add_argument(
        "--diagnose", action="store_true", help="also measure the floors of each stage"
    )
    args = parser.parse_args(argv)
    plan = Plan(
        exec_runs=args.runs or (10 if args.quick else 30),
        transfer_runs=args.transfer_runs or (2 if args.quick else 5),
        size=(args.size_mib or (16 if args.quick else 64)) * 2**20,
        poll=args.poll,
        qga_write_chunk=args.qga_write_kib * 1024,
        qga_read_chunk=args.qga_read_kib * 1024,
    )
    return plan, args


def environment() -> JsonDict:
    """Facts about the machine at the start."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "libvirt": ".".join(str(libvirt.getVersion() // 10**k % 1000) for k in (6, 3, 0)),
        "loadavg_start": load_average(),
        "qemu_processes_start": qemu_processes(),
    }


def ready_instance(cluster: Cluster, api: Client) -> str:
    """Create the benchmark instance and wait until its agent is ready; its UUID."""
    inst = api.create(
        {
            "name": "bench-agent",
            "cpus": 1,
            "memory": MEMORY_MB,
            "disks": [{"size_gb": DISK_GB, "base": "debian:11"}],
            "side_channels": ["sf-agent", RAW_CHANNEL],
        }
    )
    inst = api.wait(
        inst["uuid"],
        lambda i: i["state"] == "error" or i["agent_state"] == "ready",
        timeout=300,
        poll=0.2,
    )
    if inst["agent_state"] != "ready":
        raise AssertionError(f"the instance's agent is not ready: {inst}\n{cluster.logs()}")
    return str(inst["uuid"])


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(argv)
    started = time.monotonic()
    env = environment()
    image = build_guest_image()
    cluster = Cluster.launch(image, Path("/var/lib/mc/ba"))
    profiles: dict[str, JsonDict] = {}
    diagnostics: JsonDict = {}
    try:
        with cluster.client() as api:
            uuid = ready_instance(cluster, api)
            ours = Minicloud(api, uuid)
            qga = QemuGuestAgent(uuid)
            qga.wait_ready(120)
            device = find_port(ours, RAW_CHANNEL)
            raw = RawChannel(cluster.node_dir / "instances" / uuid / f"{RAW_CHANNEL}.sock", device)
            pids = {
                "nodeagent": cluster.procs["nodeagent"].pid,
                "controlplane": cluster.procs["controlplane"].pid,
                "qemu": qemu_pid(uuid),
                "libvirtd": pid_of_comm("libvirtd"),
                "bench client": os.getpid(),
            }
            print(f"instance {uuid} ready; raw-bench is {device} in the guest", flush=True)
            cpu = CpuMeter(pids)
            samples = Samples()
            try:
                measure_exec(plan, ours, qga, samples, cpu)
                measure_transfers(plan, ours, qga, raw, samples, cpu)
                if args.diagnose:
                    diagnostics = diagnose(plan, ours, raw, pids)
                if args.profile:
                    profiles = profile_transfers(plan, ours, pids, args.profile)
            finally:
                raw.close()
                qga.close()
    except Exception:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.shutdown()
    env |= {
        "loadavg_end": load_average(),
        "qemu_processes_end": qemu_processes(),
        "seconds": round(time.monotonic() - started, 1),
    }
    result = summarise(plan, samples, cpu, env)
    if diagnostics:
        result["diagnostics"] = diagnostics
    if profiles:
        result["profiles"] = profiles
    print_report(result)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
