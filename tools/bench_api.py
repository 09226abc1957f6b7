"""Control-plane scale benchmark with fake hypervisors.

Measures, in one run on this machine:

1. a bare grpc.aio unary echo (the standard ``grpc.health.v1.Health/Check``)
   served by its own process, driven by the same load generator as below;
2. Create calls accepted per second by a real control plane process
   (``minicloud-controlplane``, RocksDB store) with fake node agents attached,
   and how long the nodes take to bring every instance to ``created``;
3. Get (concurrent and sequential) and List latency with every instance
   of step 2 stored;
4. many simulated node agents (1,000 by default) holding streams to one fresh
   control plane: time to connect, control-plane memory per stream, and
   control-plane CPU per heartbeat over a window where only heartbeats flow.

Process layout: this orchestrator; the echo server; each control plane (a
subprocess of the console script); the simulated node agents (real node
agents from ``nodeagent.app.build``, as ``main`` builds them, over
``FakeHypervisor`` and ``FakeDiskBuilder``, one asyncio loop per process); and a
fresh load-generator process per measurement (grpc.aio, N requests in flight).
Every server binds 127.0.0.1 only and is stopped at the end; every loop is bounded in count and
in time, and every child exits by itself once the run's deadline passes.

One deliberate deviation from production: gRPC core shares one TCP connection
between channels of one process that have the same target and arguments, so
1,000 ``ControlStream`` objects in one process would multiplex over a single
connection. The node simulation therefore wraps ``grpc.aio.insecure_channel``
(in its own process only) to add ``grpc.use_local_subchannel_pool``, giving each
``ControlStream`` its own connection as separate node-agent processes have
(``--shared-connections`` turns this off).

"Creates accepted/s" is what callers see; the control plane keeps working on
each create afterwards (node command, progress events, result), so the table
also gives the end-to-end rate (until every instance is ``created``) and the
control plane's CPU per create, which together say what is sustainable.

Prints a Markdown table and one JSON line; ``--out FILE`` writes the JSON too.
``--profile DIR`` samples the control plane's GIL-holding thread with py-spy
(``.venv/bin/pip install py-spy``) during steps 2 and 4 and prints the top
frames; sampling costs some throughput, so take numbers from a run without it.

    .venv/bin/python tools/bench_api.py            # about 3-5 minutes
    .venv/bin/python tools/bench_api.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodeagent.app import NodeAgent, build
from nodeagent.blobclient import GrpcBlobs
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.settings import Settings as NodeSettings
from protos import auth_pb2, auth_pb2_grpc, common_pb2, instances_pb2, instances_pb2_grpc

if TYPE_CHECKING:
    from protos.instances_pb2_grpc import InstanceServiceAsyncStub

JsonDict = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]

NAMESPACE = "bench"
CALL_TIMEOUT = 60.0
ECHO_WARMUP = 500
MAX_MESSAGE = 256 * 1024 * 1024
RUN_LIMIT = 20 * 60.0  # every child process exits by itself after this long
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPAWN = multiprocessing.get_context("spawn")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures and how hard."""

    echo_requests: int
    warmup: int
    creates: int
    gets: int
    sequential_gets: int
    lists: int
    concurrency: int
    channels: int
    create_nodes: int
    stream_nodes: int
    node_procs: int
    heartbeat_interval: float
    cpu_window: float
    shared_connections: bool
    phases: tuple[str, ...]


FULL = Plan(
    echo_requests=20_000,
    warmup=200,
    creates=10_000,
    gets=10_000,
    sequential_gets=1_000,
    lists=20,
    concurrency=64,
    channels=1,
    create_nodes=2,
    stream_nodes=1_000,
    node_procs=1,
    heartbeat_interval=1.0,
    cpu_window=20.0,
    shared_connections=False,
    phases=("echo", "create", "reads", "streams"),
)
QUICK = dataclasses.replace(
    FULL,
    echo_requests=5_000,
    warmup=100,
    creates=2_000,
    gets=2_000,
    sequential_gets=200,
    lists=5,
    stream_nodes=250,
    cpu_window=5.0,
)


# --------------------------------------------------------------------------
# Small helpers: ports, /proc readings, statistics, child-process hygiene.


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """A process's resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def established_connections(port: int) -> int:
    """How many established TCP connections have this local port.

    gRPC listens on a dual-stack socket, so IPv4 peers appear in tcp6 as
    v4-mapped addresses; both tables are counted.
    """
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == "01":
                count += 1
    return count


def qemu_processes() -> int:
    """How many QEMU processes are running (other engineers' tests)."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith("qemu"):
                count += 1
    return count


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _die_with_parent() -> None:
    """In a forked child before exec: get SIGTERM when the orchestrator dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def quiet_logging() -> None:
    """Warnings and errors only, so simulated agents do not spend CPU on logs."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


async def wait_for_stop(deadline: float) -> None:
    """Until SIGTERM, the run's deadline, or the orchestrator is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    while not stop.is_set() and time.time() < deadline and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def stop_process(proc: BaseProcess, timeout: float = 15.0) -> None:
    """SIGTERM a child process, then kill it if it does not exit in time."""
    if proc.is_alive():
        proc.terminate()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


# --------------------------------------------------------------------------
# The load generator (runs in its own process, one per measurement).


@dataclasses.dataclass
class LoadStats:
    """Outcome of one load-generation run."""

    ok: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    concurrency: int = 1
    channels: int = 1
    latencies: list[float] = dataclasses.field(default_factory=list)

    def summary(self) -> JsonDict:
        """Throughput and latency percentiles, in a JSON-able dict."""
        ordered = sorted(self.latencies)
        return {
            "ok": self.ok,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "per_second": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
            "concurrency": self.concurrency,
            "channels": self.channels,
        }


def open_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """Channels that each have their own TCP connection."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]


async def close_channels(channels: list[grpc.aio.Channel]) -> None:
    """Close channels."""
    for channel in channels:
        await channel.close()


async def drive(
    call: Callable[[int, int], Awaitable[object]],
    total: int,
    concurrency: int,
    time_limit: float,
) -> LoadStats:
    """Run call(request_index, worker_index) total times, concurrency at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    stats = LoadStats(concurrency=concurrency)
    errors: collections.Counter[str] = collections.Counter()
    counter = iter(range(total))

    async def worker(worker_index: int) -> None:
        for index in counter:
            if loop.time() > deadline:
                return
            started = time.perf_counter()
            try:
                await call(index, worker_index)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            stats.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    stats.seconds = time.perf_counter() - started
    stats.ok = len(stats.latencies)
    stats.errors = dict(errors)
    return stats


def create_request(name: str) -> instances_pb2.CreateInstanceRequest:
    """A small, valid instance."""
    spec = common_pb2.InstanceSpec(
        name=name, cpus=1, memory=256, disks=[common_pb2.DiskSpec(size_gb=1, base="debian:11")]
    )
    return instances_pb2.CreateInstanceRequest(spec=spec)


def _stubs(channels: list[grpc.aio.Channel]) -> list[InstanceServiceAsyncStub]:
    return [instances_pb2_grpc.InstanceServiceStub(c) for c in channels]


Metadata = tuple[tuple[str, str], ...]
BENCH_KEY = "bench-system-key"
# Per process: the call metadata of the benchmark's namespace, by control-plane target.
_LOGINS: dict[str, Metadata] = {}


def metadata_for(target: str) -> Metadata:
    """Call metadata for the benchmark's namespace (logging in once per process)."""
    if target not in _LOGINS:
        _LOGINS[target] = login(target)
    return _LOGINS[target]


def login(target: str) -> Metadata:
    """Make the benchmark's namespace if needed and authenticate as it."""
    with grpc.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        token = auth.Token(auth_pb2.TokenRequest(namespace="system", key=BENCH_KEY)).access_token
        namespaces = auth_pb2_grpc.NamespaceServiceStub(channel)
        request = auth_pb2.CreateNamespaceRequest(name=NAMESPACE, key_name="k", key=BENCH_KEY)
        with contextlib.suppress(grpc.RpcError):  # it exists already
            namespaces.Create(request, metadata=(("authorization", f"Bearer {token}"),))
        token = auth.Token(auth_pb2.TokenRequest(namespace=NAMESPACE, key=BENCH_KEY)).access_token
    return (("authorization", f"Bearer {token}"),)


async def _echo(target: str, total: int, concurrency: int, channels: int) -> JsonDict:
    chans = open_channels(target, channels)
    stubs = [health_pb2_grpc.HealthStub(c) for c in chans]
    request = health_pb2.HealthCheckRequest()

    async def call(index: int, worker: int) -> object:
        return await stubs[worker % channels].Check(request, timeout=CALL_TIMEOUT)

    await drive(call, min(ECHO_WARMUP, total), concurrency, 30)
    stats = await drive(call, total, concurrency, 120)
    stats.channels = channels
    await close_channels(chans)
    return stats.summary()


def job_echo(target: str, total: int, concurrency: int, channels: int) -> JsonDict:
    """Measurement 1: bare grpc.aio unary calls."""
    return asyncio.run(_echo(target, total, concurrency, channels))


async def _create(
    target: str, prefix: str, warmup: int, total: int, concurrency: int, channels: int
) -> JsonDict:
    metadata = metadata_for(target)
    chans = open_channels(target, channels)
    stubs = _stubs(chans)
    uuids: list[str] = []

    def caller(tag: str) -> Callable[[int, int], Awaitable[object]]:
        async def call(index: int, worker: int) -> object:
            stub = stubs[worker % channels]
            request = create_request(f"{prefix}-{tag}{index}")
            inst = await stub.Create(request, metadata=metadata, timeout=CALL_TIMEOUT)
            uuids.append(inst.uuid)
            return inst

        return call

    await drive(caller("w"), warmup, min(concurrency, max(1, warmup)), 60)
    started_at = time.time()
    stats = await drive(caller(""), total, concurrency, 240)
    stats.channels = channels
    await close_channels(chans)
    return {**stats.summary(), "started_at": started_at, "uuids": uuids}


def job_create(
    target: str, prefix: str, warmup: int, total: int, concurrency: int, channels: int
) -> JsonDict:
    """Measurement 2: Create calls with distinct names; returns the new UUIDs too."""
    return asyncio.run(_create(target, prefix, warmup, total, concurrency, channels))


async def _wait_created(target: str, uuids: list[str], time_limit: float) -> JsonDict:
    metadata = metadata_for(target)
    chans = open_channels(target, 1)
    stub = _stubs(chans)[0]
    deadline = time.monotonic() + time_limit
    tail = uuids[-32:]
    states: collections.Counter[str] = collections.Counter()
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        seen = [
            (await stub.Get(ref, metadata=metadata, timeout=CALL_TIMEOUT)).state
            for ref in (instances_pb2.InstanceRef(ref=u) for u in tail)
        ]
        if all(s != "creating" for s in seen):
            listed = await stub.List(
                instances_pb2.ListInstancesRequest(), metadata=metadata, timeout=CALL_TIMEOUT
            )
            states = collections.Counter(i.state for i in listed.instances)
            if states["creating"] == 0:
                break
        await asyncio.sleep(0.25)
    await close_channels(chans)
    return {"settled_at": time.time(), "states": dict(states), "polls": polls}


def job_wait_created(target: str, uuids: list[str], time_limit: float) -> JsonDict:
    """Wait until no instance is still 'creating'; when, and the state counts."""
    return asyncio.run(_wait_created(target, uuids, time_limit))


async def _gets(
    target: str, uuids: list[str], total: int, sequential: int, concurrency: int, channels: int
) -> JsonDict:
    metadata = metadata_for(target)
    chans = open_channels(target, channels)
    stubs = _stubs(chans)
    refs = random.Random(7).choices(uuids, k=max(total, sequential))

    async def call(index: int, worker: int) -> object:
        request = instances_pb2.InstanceRef(ref=refs[index])
        return await stubs[worker % channels].Get(request, metadata=metadata, timeout=CALL_TIMEOUT)

    await drive(call, min(ECHO_WARMUP, total), concurrency, 30)  # warm-up
    concurrent_stats = await drive(call, total, concurrency, 120)
    concurrent_stats.channels = channels
    one_at_a_time = await drive(call, sequential, 1, 60)
    await close_channels(chans)
    return {"concurrent": concurrent_stats.summary(), "sequential": one_at_a_time.summary()}


def job_gets(
    target: str, uuids: list[str], total: int, sequential: int, concurrency: int, channels: int
) -> JsonDict:
    """Measurement 3a: Get by UUID under concurrency, then one at a time."""
    return asyncio.run(_gets(target, uuids, total, sequential, concurrency, channels))


async def _lists(target: str, calls: int) -> JsonDict:
    metadata = metadata_for(target)
    chans = open_channels(target, 1)
    stub = _stubs(chans)[0]
    sizes: list[int] = []

    async def call(index: int, worker: int) -> object:
        request = instances_pb2.ListInstancesRequest()
        found = await stub.List(request, metadata=metadata, timeout=CALL_TIMEOUT)
        sizes.append(len(found.instances))
        return found

    stats = await drive(call, calls, 1, 120)
    await close_channels(chans)
    return {**stats.summary(), "instances": max(sizes, default=0)}


def job_lists(target: str, calls: int) -> JsonDict:
    """Measurement 3b: List every instance, one call at a time."""
    return asyncio.run(_lists(target, calls))


# --------------------------------------------------------------------------
# Servers: the echo server, the control plane, the simulated node agents.


async def _serve_echo(conn: Connection, deadline: float) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    conn.send(port)
    await wait_for_stop(deadline)
    await server.stop(0)


def echo_server_main(conn: Connection, deadline: float) -> None:
    """Child process: a grpc.aio server with only the health service."""
    asyncio.run(_serve_echo(conn, deadline))


@contextlib.contextmanager
def echo_server(deadline: float) -> Iterator[tuple[str, int]]:
    """Run the echo server in its own process; yields its target and process id."""
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=echo_server_main, args=(child, deadline), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("echo server did not start")
        yield f"127.0.0.1:{parent.recv()}", proc.pid or 0
    finally:
        stop_process(proc)


@dataclasses.dataclass
class Plane:
    """A control plane running as a subprocess of the console script."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        """Where to dial it."""
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        """The end of its log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(plane: Plane, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(plane.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if plane.proc.poll() is not None:
                raise RuntimeError(f"control plane exited:\n{plane.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"control plane not ready after {timeout}s:\n{plane.log_tail()}")


@contextlib.contextmanager
def control_plane(workdir: Path, heartbeat_interval: float) -> Iterator[Plane]:
    """Run minicloud-controlplane on 127.0.0.1 with a fresh RocksDB store."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).parent / "minicloud-controlplane"
    command = [str(binary)] if binary.exists() else [shutil.which("minicloud-controlplane") or ""]
    port = free_port()
    env = {
        **os.environ,
        "MINICLOUD_LISTEN": f"127.0.0.1:{port}",
        "MINICLOUD_METRICS_LISTEN": "127.0.0.1:0",
        "MINICLOUD_DATA_DIR": str(workdir / "data"),
        "MINICLOUD_NAME": "bench-cp",
        "MINICLOUD_HEARTBEAT_INTERVAL": str(heartbeat_interval),
        "MINICLOUD_SYSTEM_KEY": BENCH_KEY,
        "MINICLOUD_TOKEN_TTL": "86400",
    }
    log = workdir / "controlplane.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    plane = Plane(proc, port, log)
    try:
        _wait_ready(plane, 30)
        metadata_for(plane.target)
        yield plane
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def use_own_connections() -> None:
    """Give every grpc.aio channel of this process its own TCP connection."""
    original = grpc.aio.insecure_channel

    def insecure_channel(
        target: str,
        options: Any = None,
        compression: Any = None,
        interceptors: Any = None,
    ) -> grpc.aio.Channel:
        own = [*(options or ()), ("grpc.use_local_subchannel_pool", 1)]
        return original(target, options=own, compression=compression, interceptors=interceptors)

    grpc.aio.insecure_channel = insecure_channel


def raise_fd_limit() -> None:
    """Allow as many open files as the hard limit does (one socket per node)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclasses.dataclass(frozen=True)
class NodeSimConfig:
    """What one node-simulation process runs."""

    target: str
    names: tuple[str, ...]
    cpus: int
    memory_mb: int
    heartbeat_interval: float
    workdir: str
    shared_connections: bool
    connect_timeout: float
    deadline: float


def counting_sleep(counter: Any, interval: float) -> Sleep:
    """asyncio.sleep that counts the heartbeat-interval sleeps (one per heartbeat)."""

    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay)
        if delay == interval:
            counter.value += 1

    return sleep


def build_agent(config: NodeSimConfig, name: str, sleep: Sleep) -> NodeAgent:
    """One node agent as nodeagent.app builds it (nodeagent.app.build), over fakes."""
    settings = NodeSettings(
        control_plane=config.target,
        name=name,
        data_dir=Path(config.workdir) / name,
        hypervisor="fake",
        cpus=config.cpus,
        memory_mb=config.memory_mb,
        backoff_base=0.5,
        backoff_cap=5.0,
        usage_interval=0,
        metrics_listen="",
    )
    blobs = GrpcBlobs(config.target, Credentials("system", BENCH_KEY))  # dials only when used
    return build(settings, FakeHypervisor(), FakeDiskBuilder(), blobs, sleep=sleep)


async def _run_nodes(config: NodeSimConfig, counter: Any, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    sleep = counting_sleep(counter, config.heartbeat_interval)
    agents = [build_agent(config, name, sleep) for name in config.names]
    started = loop.time()
    stop = asyncio.Event()
    tasks = [loop.create_task(agent.run(stop)) for agent in agents]
    waiters = [loop.create_task(agent.stream.connected.wait()) for agent in agents]
    _, pending = await asyncio.wait(waiters, timeout=config.connect_timeout)
    for waiter in pending:
        waiter.cancel()
    connected = sum(agent.stream.connected.is_set() for agent in agents)
    conn.send({"connected": connected, "seconds": loop.time() - started})
    await wait_for_stop(config.deadline)
    final = {
        "still_connected": sum(agent.stream.connected.is_set() for agent in agents),
        "connections": sum(agent.stream.connections for agent in agents),
    }
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(final)


def nodes_main(config: NodeSimConfig, counter: Any, conn: Connection) -> None:
    """Child process: many node agents with fake hypervisors in one asyncio loop."""
    quiet_logging()
    raise_fd_limit()
    if not config.shared_connections:
        use_own_connections()
    asyncio.run(_run_nodes(config, counter, conn))


@dataclasses.dataclass
class NodeSim:
    """Running node-simulation processes."""

    procs: list[BaseProcess]
    pipes: list[Connection]
    counters: list[Any]
    connected: int = 0
    connect_seconds: float = 0.0
    final: JsonDict = dataclasses.field(default_factory=dict)

    def heartbeats(self) -> int:
        """Heartbeats sent so far by every simulated node."""
        return sum(int(c.value) for c in self.counters)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the simulation processes."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)


@contextlib.contextmanager
def node_agents(
    target: str,
    count: int,
    procs: int,
    prefix: str,
    heartbeat_interval: float,
    workdir: Path,
    plan: Plan,
    deadline: float,
) -> Iterator[NodeSim]:
    """Start count fake node agents over procs processes; wait until they register."""
    names = [f"{prefix}{i:04d}" for i in range(count)]
    sim = NodeSim([], [], [])
    connect_timeout = 30 + count * 0.1
    try:
        for p in range(procs):
            config = NodeSimConfig(
                target=target,
                names=tuple(names[p::procs]),
                cpus=100_000,
                memory_mb=100_000_000,
                heartbeat_interval=heartbeat_interval,
                workdir=str(workdir),
                shared_connections=plan.shared_connections,
                connect_timeout=connect_timeout,
                deadline=deadline,
            )
            parent, child = SPAWN.Pipe()
            counter = SPAWN.RawValue("q", 0)
            child_proc = SPAWN.Process(
                target=nodes_main, args=(config, counter, child), daemon=True
            )
            child_proc.start()
            sim.procs.append(child_proc)
            sim.pipes.append(parent)
            sim.counters.append(counter)
        for pipe in sim.pipes:
            if not pipe.poll(connect_timeout + 30):
                raise RuntimeError("node simulation did not report")
            report = pipe.recv()
            sim.connected += report["connected"]
            sim.connect_seconds = max(sim.connect_seconds, report["seconds"])
        yield sim
    finally:
        for proc in sim.procs:
            if proc.is_alive():
                proc.terminate()
        totals: collections.Counter[str] = collections.Counter()
        for pipe in sim.pipes:
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll(15):
                    totals.update(pipe.recv())
        sim.final = dict(totals)
        for proc in sim.procs:
            stop_process(proc)


# --------------------------------------------------------------------------
# Profiling the control plane with py-spy (optional).


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, attach_wait: float = 1.0) -> Iterator[None]:
    """Sample a process with py-spy into a collapsed-stack file while the block runs.

    Only the thread holding the GIL is sampled (``--gil``): the event loop's
    Python work. Time inside gRPC's Cython core shows as ``Handle._run``.
    """
    binary = Path(sys.executable).parent / "py-spy"
    if out is None or not binary.exists():
        yield
        return
    command = [str(binary), "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--gil"]
    command += ["--format", "raw", "--output", str(out)]
    with (out.with_suffix(".log")).open("wb") as log:
        spy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(attach_wait)  # let it attach
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def hotspots(collapsed: Path, top: int = 25) -> JsonDict:
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
        return [(f, round(100 * n / total, 1)) for f, n in counter.most_common(top)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}


# --------------------------------------------------------------------------
# The measurements, one function each.


def in_child(pool: concurrent.futures.Executor, timeout: float, func: Any, *args: Any) -> Any:
    """Run a load-generator job in the client process and wait for its result."""
    return pool.submit(func, *args).result(timeout=timeout)


def measure_echo(pool: concurrent.futures.Executor, plan: Plan, deadline: float) -> JsonDict:
    """1. Bare grpc.aio unary echo, for scale."""
    with echo_server(deadline) as (target, pid):
        cpu0 = cpu_seconds(pid)
        args = (target, plan.echo_requests, plan.concurrency, plan.channels)
        result = dict(in_child(pool, 300, job_echo, *args))
        calls = result["ok"] + min(ECHO_WARMUP, plan.echo_requests)
        result["server_us_per_call"] = round(1e6 * (cpu_seconds(pid) - cpu0) / max(1, calls), 1)
        return result


def measure_creates(
    pool: concurrent.futures.Executor, plan: Plan, plane: Plane, profile_dir: Path | None
) -> JsonDict:
    """2. Creates accepted per second, then how long until every one is 'created'."""
    pid = plane.proc.pid
    cpu0 = cpu_seconds(pid)
    spy_out = profile_dir / "create-accept.txt" if profile_dir else None
    with py_spy(pid, spy_out):
        created = in_child(
            pool,
            400,
            job_create,
            plane.target,
            "vm",
            plan.warmup,
            plan.creates,
            plan.concurrency,
            plan.channels,
        )
    cpu1 = cpu_seconds(pid)
    uuids: list[str] = created.pop("uuids")
    spy_settle = profile_dir / "create-settle.txt" if profile_dir else None
    with py_spy(pid, spy_settle):
        settled = in_child(pool, 400, job_wait_created, plane.target, uuids, 300)
    cpu2 = cpu_seconds(pid)
    end_to_end = settled["settled_at"] - created["started_at"]
    complete = settled["states"].get("created", 0)
    result: JsonDict = {
        "accept": created,
        "stored": len(uuids),
        "states": settled["states"],
        "all_created_after_s": round(end_to_end, 2),
        "created_per_second_end_to_end": round(plan.creates / end_to_end, 1),
        "created": complete,
        "cp_cpu_s_accept": round(cpu1 - cpu0, 2),
        "cp_cpu_s_settle": round(cpu2 - cpu1, 2),
        "cp_cpu_ms_per_create": round(1000 * (cpu2 - cpu0) / max(1, len(uuids)), 3),
        "uuids": uuids,
    }
    if profile_dir:
        result["profile_accept"] = hotspots(profile_dir / "create-accept.txt")
        result["profile_settle"] = hotspots(profile_dir / "create-settle.txt")
    return result


def measure_reads(
    pool: concurrent.futures.Executor, plan: Plan, plane: Plane, uuids: list[str]
) -> JsonDict:
    """3. Get under concurrency and one at a time, and List, with everything stored."""
    gets = in_child(
        pool,
        300,
        job_gets,
        plane.target,
        uuids,
        plan.gets,
        plan.sequential_gets,
        plan.concurrency,
        plan.channels,
    )
    lists = in_child(pool, 300, job_lists, plane.target, plan.lists)
    return {"get": gets["concurrent"], "get_sequential": gets["sequential"], "list": lists}


def measure_streams(
    plan: Plan, workdir: Path, deadline: float, profile_dir: Path | None
) -> JsonDict:
    """4. Many node streams to one fresh control plane: memory, connect time, heartbeat CPU."""
    with control_plane(workdir / "cp-streams", plan.heartbeat_interval) as plane:
        pid = plane.proc.pid
        time.sleep(2.0)
        rss_before = rss_kib(pid)
        idle_window = min(5.0, plan.cpu_window)
        idle0 = cpu_seconds(pid)
        time.sleep(idle_window)
        idle_cpu = (cpu_seconds(pid) - idle0) / idle_window
        cpu_connect0 = cpu_seconds(pid)
        with node_agents(
            plane.target,
            plan.stream_nodes,
            plan.node_procs,
            "sim",
            plan.heartbeat_interval,
            workdir / "nodes-streams",
            plan,
            deadline,
        ) as sim:
            cpu_connect = cpu_seconds(pid) - cpu_connect0
            time.sleep(max(3.0, 2 * plan.heartbeat_interval))  # inventories done, steady state
            rss_after = rss_kib(pid)
            connections = established_connections(plane.port)
            cpu0, beats0, sim0, t0 = (
                cpu_seconds(pid),
                sim.heartbeats(),
                sim.cpu_seconds(),
                time.time(),
            )
            spy_out = profile_dir / "heartbeats.txt" if profile_dir else None
            with py_spy(pid, spy_out, attach_wait=0.0):
                time.sleep(plan.cpu_window)
            cpu1, beats1, sim1, t1 = (
                cpu_seconds(pid),
                sim.heartbeats(),
                sim.cpu_seconds(),
                time.time(),
            )
            connections_end = established_connections(plane.port)
            rss_end = rss_kib(pid)
        window = t1 - t0
        beats = beats1 - beats0
        return {
            "nodes": plan.stream_nodes,
            "node_processes": plan.node_procs,
            "connected": sim.connected,
            "connect_s": round(sim.connect_seconds, 2),
            "cp_cpu_s_connect": round(cpu_connect, 2),
            "tcp_connections": connections,
            "tcp_connections_end": connections_end,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_end_kib": rss_end,
            "kib_per_stream": round((rss_after - rss_before) / max(1, sim.connected), 1),
            "heartbeat_interval_s": plan.heartbeat_interval,
            "window_s": round(window, 2),
            "heartbeats": beats,
            "cp_idle_cpu_per_s": round(idle_cpu, 4),
            "cp_cpu_per_s": round((cpu1 - cpu0) / window, 4),
            "cp_us_per_heartbeat": round(1e6 * (cpu1 - cpu0) / max(1, beats), 1),
            "sim_cpu_per_s": round((sim1 - sim0) / window, 4),
            "final": sim.final,
            "profile": hotspots(profile_dir / "heartbeats.txt") if profile_dir else {},
        }


def measure_create_and_reads(
    pool: concurrent.futures.Executor,
    plan: Plan,
    workdir: Path,
    deadline: float,
    profile_dir: Path | None,
) -> JsonDict:
    """2 and 3 against one control plane with fake nodes attached."""
    result: JsonDict = {}
    with (
        control_plane(workdir / "cp-api", 5.0) as plane,
        node_agents(
            plane.target,
            plan.create_nodes,
            1,
            "node",
            5.0,
            workdir / "nodes-api",
            plan,
            deadline,
        ) as sim,
    ):
        node_cpu0 = sim.cpu_seconds()
        result["create"] = measure_creates(pool, plan, plane, profile_dir)
        result["create"]["node_sim_cpu_s"] = round(sim.cpu_seconds() - node_cpu0, 2)
        uuids = result["create"].pop("uuids")
        if "reads" in plan.phases and uuids:
            result["reads"] = measure_reads(pool, plan, plane, uuids)
        result["cp_rss_kib"] = rss_kib(plane.proc.pid)
    return result


# --------------------------------------------------------------------------
# Reporting.


def _ms(stats: JsonDict) -> str:
    return f"{stats['p50_ms']:.2f} ms / {stats['p99_ms']:.2f} ms"


def _errors(stats: JsonDict) -> str:
    errors = stats.get("errors") or {}
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) or "none"


def table(results: JsonDict) -> str:
    """The results as a Markdown table."""
    rows: list[tuple[str, str, str]] = []
    echo = results.get("echo")
    if echo:
        where = f"c={echo['concurrency']}, {echo['channels']} channel(s), {echo['ok']} calls"
        rows.append(("1. Echo (Health/Check) req/s", f"{echo['per_second']:,.0f}", where))
        rows.append(
            (
                "1. Echo p50 / p99",
                _ms(echo),
                f"server CPU {echo['server_us_per_call']} µs per call; errors: {_errors(echo)}",
            )
        )
    api = results.get("api", {})
    create = api.get("create")
    if create:
        acc = create["accept"]
        where = f"c={acc['concurrency']}, {acc['ok']} creates, goal >= 2,000/s"
        rows.append(("2. Creates accepted/s", f"{acc['per_second']:,.0f}", where))
        rows.append(("2. Create p50 / p99", _ms(acc), f"errors: {_errors(acc)}"))
        rows.append(
            (
                "2. All instances 'created' (end to end)",
                f"{create['all_created_after_s']} s "
                f"({create['created_per_second_end_to_end']:,.0f}/s)",
                f"states: {create['states']}",
            )
        )
        rows.append(
            (
                "2. Control-plane CPU per create",
                f"{create['cp_cpu_ms_per_create']} ms",
                f"accept {create['cp_cpu_s_accept']} s + settle {create['cp_cpu_s_settle']} s "
                f"CPU; node sim {create['node_sim_cpu_s']} s",
            )
        )
    reads = api.get("reads")
    if reads:
        get, seq, lst = reads["get"], reads["get_sequential"], reads["list"]
        stored = create["stored"] if create else "?"
        where = f"c={get['concurrency']}, {get['ok']} calls, {stored} stored"
        rows.append(("3. Get by UUID req/s", f"{get['per_second']:,.0f}", where))
        rows.append(("3. Get p50 / p99 (concurrent)", _ms(get), f"errors: {_errors(get)}"))
        rows.append(("3. Get p50 / p99 (sequential)", _ms(seq), f"{seq['ok']} calls"))
        rows.append(
            ("3. List p50 / p99", _ms(lst), f"{lst['instances']} instances, {lst['ok']} calls")
        )
    streams = results.get("streams")
    if streams:
        rows.append(
            (
                "4. Node streams connected",
                f"{streams['connected']} / {streams['nodes']} in {streams['connect_s']} s",
                f"{streams['tcp_connections']} TCP connections at the control plane; "
                f"{streams['node_processes']} sim process(es)",
            )
        )
        rows.append(
            (
                "4. Control-plane RSS before / after",
                f"{streams['rss_before_kib'] / 1024:.1f} / "
                f"{streams['rss_after_kib'] / 1024:.1f} MiB",
                f"{streams['kib_per_stream']} KiB per node stream",
            )
        )
        rows.append(
            (
                "4. Control-plane CPU, heartbeats only",
                f"{streams['cp_cpu_per_s']:.3f} CPU-s/s",
                f"{streams['heartbeats']:,} heartbeats in {streams['window_s']} s "
                f"(interval {streams['heartbeat_interval_s']} s); idle before: "
                f"{streams['cp_idle_cpu_per_s']:.3f} CPU-s/s",
            )
        )
        rows.append(
            (
                "4. Control-plane CPU per heartbeat",
                f"{streams['cp_us_per_heartbeat']} µs",
                f"node sim used {streams['sim_cpu_per_s']:.3f} CPU-s/s; "
                f"connect cost {streams['cp_cpu_s_connect']} CPU-s; end: {streams['final']}",
            )
        )
    lines = ["| Measurement | Result | Notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def print_hotspots(name: str, profile: JsonDict) -> None:
    """The top frames of a py-spy profile."""
    if not profile:
        return
    print(f"\n### Control-plane profile: {name} ({profile['samples']} samples)")
    for kind in ("self", "inclusive"):
        print(f"\n{kind}:")
        for frame, share in profile[kind]:
            print(f"  {share:5.1f}%  {frame}")


# --------------------------------------------------------------------------
# Entry point.


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """The plan from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 1 minute)")
    parser.add_argument("--out", type=Path, help="also write the JSON results here")
    parser.add_argument("--concurrency", type=int, help="requests in flight")
    parser.add_argument("--channels", type=int, help="client channels (TCP connections)")
    parser.add_argument("--creates", type=int, help="creates to measure")
    parser.add_argument("--create-nodes", type=int, help="fake nodes during creates")
    parser.add_argument("--nodes", type=int, help="simulated node streams (measurement 4)")
    parser.add_argument("--node-procs", type=int, help="processes to spread them over")
    parser.add_argument("--heartbeat", type=float, help="heartbeat interval in seconds")
    parser.add_argument("--window", type=float, help="CPU measuring window in seconds")
    parser.add_argument(
        "--shared-connections",
        action="store_true",
        help="let simulated nodes of one process share a TCP connection (gRPC's default)",
    )
    parser.add_argument(
        "--phases", default=",".join(FULL.phases), help="comma-separated subset of: %(default)s"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the control plane into this folder")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides = {
        "concurrency": args.concurrency,
        "channels": args.channels,
        "creates": args.creates,
        "create_nodes": args.create_nodes,
        "stream_nodes": args.nodes,
        "node_procs": args.node_procs,
        "heartbeat_interval": args.heartbeat,
        "cpu_window": args.window,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = set(phases) - set(FULL.phases)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    plan = dataclasses.replace(plan, phases=phases, shared_connections=args.shared_connections)
    return plan, args


def environment() -> JsonDict:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "loadavg_start": load_average(),
        "qemu_processes_start": qemu_processes(),
    }


def run(plan: Plan, args: argparse.Namespace) -> JsonDict:
    """Every measurement the plan asks for, in order."""
    deadline = time.time() + RUN_LIMIT
    results: JsonDict = {"plan": dataclasses.asdict(plan), "environment": environment()}
    started = time.monotonic()
    profile_dir: Path | None = args.profile
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=SPAWN, max_tasks_per_child=1
        ) as pool,
    ):
        workdir = Path(tmp)
        if "echo" in plan.phases:
            results["echo"] = measure_echo(pool, plan, deadline)
        if "create" in plan.phases:
            results["api"] = measure_create_and_reads(pool, plan, workdir, deadline, profile_dir)
        if "streams" in plan.phases:
            results["streams"] = measure_streams(plan, workdir, deadline, profile_dir)
    results["environment"]["loadavg_end"] = load_average()
    results["environment"]["qemu_processes_end"] = qemu_processes()
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table and JSON line."""
    plan, args = parse_args(argv)
    command = f"cd {Path.cwd()} && {shlex.join([sys.executable, *sys.argv])}"
    print(f"# bench_api: {command}", flush=True)
    results = run(plan, args)
    results["command"] = command
    env = results["environment"]
    print(
        f"\n{env['cpus']} CPUs, Python {env['python']}, grpcio {env['grpc']}; "
        f"load {env['loadavg_start']} -> {env['loadavg_end']}; QEMU processes "
        f"{env['qemu_processes_start']} -> {env['qemu_processes_end']}; "
        f"run took {results['seconds']} s\n"
    )
    print(table(results))
    create = results.get("api", {}).get("create", {})
    print_hotspots("creates being accepted", create.get("profile_accept", {}))
    print_hotspots("node reports being applied", create.get("profile_settle", {}))
    print_hotspots("heartbeats only", results.get("streams", {}).get("profile", {}))
    print(f"\nReproduce: {command}\n")
    line = json.dumps(results, sort_keys=True)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
