"""GuestChannel and GuestLinks against the real guest agent (on a unix socket) and hostile fakes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from common.nodewire.agentstate import AgentState
from guestagent.protocol import HEADER, MAGIC, VERSION, Decoder, Frame, Kind, encode
from nodeagent.guest.channel import ChannelSettings, GuestChannel, GuestError, GuestUnavailable
from nodeagent.guest.links import GuestLinks, LinkSettings

NO_CONTACT, READY, UNRESPONSIVE = AgentState.NO_CONTACT, AgentState.READY, AgentState.UNRESPONSIVE

ROOT = Path(__file__).resolve().parents[2]
QUICK = ChannelSettings(connect_timeout=2, reply_timeout=2, idle_timeout=1, execute_grace=2)

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (unix socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="ga-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class AgentProcess:
    """The real guest agent (`python -m guestagent.serve --listen PATH`) as a subprocess."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it and wait for its socket."""
        self.path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guestagent.serve", "--listen", str(self.path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(200):
            if self.path.exists():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the guest agent did not create its socket")

    def terminate(self) -> None:
        """SIGTERM it and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL it (its socket file stays behind, refusing connections)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)


@pytest.fixture
async def agent(short_dir: Path) -> AsyncIterator[AgentProcess]:
    """A running guest agent serving on a unix socket."""
    process = AgentProcess(short_dir / "agent.sock")
    await process.start()
    yield process
    process.kill()


@pytest.fixture
async def channel(agent: AgentProcess) -> AsyncIterator[GuestChannel]:
    """A GuestChannel connected to the real guest agent."""
    ch = GuestChannel(agent.path, QUICK)
    await ch.connect()
    yield ch
    await ch.close()


class FakeGuest:
    """A hostile or broken guest: a unix socket server running one behaviour per connection."""

    def __init__(self, path: Path, behaviour: Behaviour) -> None:
        self.path = path
        self.behaviour = behaviour
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> FakeGuest:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            try:
                await self.behaviour(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # the host left, or the test is over
            finally:
                writer.close()

        self.server = await asyncio.start_unix_server(serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def read_frame(reader: asyncio.StreamReader, decoder: Decoder) -> Frame:
    """The next frame the host sent."""
    while True:
        header = await reader.readexactly(HEADER.size)
        _, _, _, _, json_length, data_length = HEADER.unpack(header)
        body = await reader.readexactly(json_length + data_length)
        frames = decoder.feed(header + body)
        if frames:
            return frames[0]


def hello_reply(request_id: int, boot_time: float = 1000.0) -> bytes:
    """What a guest answers to the host's HELLO."""
    fields = {"version": VERSION, "agent": "fake", "boot_time": boot_time, "hostname": "fake"}
    return encode(Frame(Kind.HELLO, request_id, fields))


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, boot_time: float = 1000.0
) -> Decoder:
    """Answer the host's HELLO properly; return the decoder for later frames."""
    decoder = Decoder()
    hello = await read_frame(reader, decoder)
    writer.write(hello_reply(hello.request_id, boot_time))
    await writer.drain()
    return decoder


async def answer_pings(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: Decoder
) -> None:
    """Serve PINGs and is-system-running until the host leaves."""
    while True:
        frame = await read_frame(reader, decoder)
        if frame.kind == Kind.PING:
            writer.write(encode(Frame(Kind.PONG, frame.request_id, {"time": 0.0})))
        elif frame.kind == Kind.REQUEST:
            writer.write(encode(Frame(Kind.OK, frame.request_id, {"state": "running"})))
        await writer.drain()


# --- the real agent ------------------------------------------------------------


async def test_handshake_reports_version_and_boot_time(channel: GuestChannel) -> None:
    """The hello carries the protocol version, the agent's name and this machine's boot time."""
    assert channel.hello is not None
    assert channel.hello.version == VERSION
    assert channel.hello.agent.startswith("minicloud-guestagent/")
    assert abs(channel.hello.boot_time - (time.time() - time.monotonic())) < 120
    assert set(channel.hello.ops) >= {"execute", "put", "get", "is-system-running"}
    assert await channel.ping() < 1
    assert await channel.is_system_running() in ("running", "degraded", "starting", "unknown")


async def test_freeze_then_thaw_and_freezes_end_with_the_connection(
    agent: AgentProcess,
) -> None:
    """A freeze answers what it froze, a second one is refused, a thaw ends it; a freeze
    whose connection ends is thawed, and one left alone thaws at its timeout (simulated
    freezes: an agent on a socket never freezes the host)."""
    channel = GuestChannel(agent.path, QUICK)
    hello = await channel.connect()
    assert "freeze" in hello.ops and "thaw" in hello.ops
    frozen = await channel.freeze(timeout=30)
    assert frozen.timeout == 30 and all(path.startswith("/") for path in frozen.frozen)
    with pytest.raises(GuestError, match="frozen already"):
        await channel.freeze(timeout=30)
    assert (await channel.thaw()) == (frozen.frozen, False)
    await channel.freeze(timeout=30)
    await channel.close()

    await asyncio.sleep(0.6)  # let the agent notice the host left
    channel = GuestChannel(agent.path, QUICK)
    await channel.connect()
    assert (await channel.thaw()) == ((), False)  # thawed when the first host left
    await channel.freeze(timeout=0.2)
    await asyncio.sleep(0.5)
    thawed, expired = await channel.thaw()
    assert thawed == () and (expired or not frozen.frozen)
    await channel.close()


async def test_execute_echo(channel: GuestChannel) -> None:
    """`echo hi` returns 0 and its output."""
    result = await channel.execute("echo hi")
    assert (result.return_code, result.stdout, result.stderr) == (0, b"hi\n", b"")


async def test_execute_exit_code_and_stderr(channel: GuestChannel) -> None:
    """A command that exits 3 reports 3 and what it wrote to stderr."""
    result = await channel.execute("echo oops >&2; exit 3")
    assert (result.return_code, result.stderr) == (3, b"oops\n")


async def test_execute_missing_command(channel: GuestChannel) -> None:
    """A command that does not exist is the shell's 127 with its message."""
    result = await channel.execute("no-such-command-here")
    assert result.return_code == 127
    assert b"not found" in result.stderr


async def test_execute_streams_output_before_exit(channel: GuestChannel) -> None:
    """Output reaches on_output as produced, well before a slow command ends."""
    started = time.monotonic()
    arrivals: list[tuple[float, str, bytes]] = []
    result = await channel.execute(
        "echo a; sleep 2; echo b >&2; echo c",
        on_output=lambda stream, chunk: arrivals.append((time.monotonic(), stream, chunk)),
    )
    finished = time.monotonic()
    assert arrivals[0][1:] == ("stdout", b"a\n")
    assert arrivals[0][0] - started < 1.0
    assert finished - started >= 2.0
    assert ("stderr", b"b\n") in [(s, c) for _, s, c in arrivals]
    assert result.stdout == b"a\nc\n" and result.stderr == b"b\n"


async def test_execute_env_cwd_and_timeout(channel: GuestChannel, short_dir: Path) -> None:
    """env is added, cwd is used, and a command past its timeout is killed."""
    result = await channel.execute('echo "$GREETING"; pwd', env={"GREETING": "hi"}, cwd="/tmp")
    assert result.stdout == b"hi\n/tmp\n"
    started = time.monotonic()
    slow = await channel.execute("echo started; sleep 30", timeout=0.5)
    assert slow.timed_out and slow.return_code == -signal.SIGKILL
    assert slow.stdout == b"started\n"
    assert time.monotonic() - started < 3


async def test_execute_in_missing_folder_is_guest_error(channel: GuestChannel) -> None:
    """A cwd that does not exist fails with a GuestError naming it."""
    with pytest.raises(GuestError, match="/no/such/folder"):
        await channel.execute("true", cwd="/no/such/folder")
    assert await channel.ping() >= 0


async def test_execute_output_kept_is_bounded(agent: AgentProcess) -> None:
    """Beyond max_output the result is truncated (and says so) while on_output sees it all."""
    ch = GuestChannel(agent.path, ChannelSettings(max_output=1000))
    await ch.connect()
    seen = 0

    def count(_stream: str, chunk: bytes) -> None:
        nonlocal seen
        seen += len(chunk)

    result = await ch.execute("head -c 300000 /dev/zero", on_output=count)
    await ch.close()
    assert seen == 300000
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert not result.stderr_truncated


async def test_put_then_get_ten_mib(channel: GuestChannel, short_dir: Path) -> None:
    """10 MiB of random bytes go in with the mode applied and come back identical."""
    data = os.urandom(10 * 1024 * 1024)
    target = short_dir / "random.bin"

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), 3 * 1024 * 1024 + 7):
            yield data[offset : offset + 3 * 1024 * 1024 + 7]

    assert await channel.put(str(target), 0o600, chunks()) == len(data)
    assert target.stat().st_mode & 0o7777 == 0o600
    assert [p.name for p in short_dir.iterdir() if p.name.endswith(".part")] == []
    stat, stream = await channel.get(str(target))
    assert stat["size"] == len(data) and stat["mode"] == 0o600
    digest = hashlib.sha512()
    async for chunk in stream:
        digest.update(chunk)
    assert digest.digest() == hashlib.sha512(data).digest()


async def test_get_missing_path_is_clear_guest_error(channel: GuestChannel) -> None:
    """Getting a missing file raises GuestError saying so; the channel carries on."""
    with pytest.raises(GuestError, match=r"/no/such/file: No such file or directory"):
        await channel.get("/no/such/file")
    with pytest.raises(GuestError, match="not a regular file"):
        await channel.get("/tmp")
    assert await channel.ping() >= 0


async def test_put_into_missing_folder_fails_without_leftovers(
    channel: GuestChannel, short_dir: Path
) -> None:
    """A put whose folder is missing raises GuestError; a failed source leaves no file."""
    with pytest.raises(GuestError, match="No such file or directory"):
        await channel.put(str(short_dir / "missing" / "f"), 0o644, [b"x" * 5_000_000])

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        await channel.put(str(short_dir / "never"), 0o644, broken())
    await asyncio.sleep(0.2)
    assert list(short_dir.iterdir()) == [short_dir / "agent.sock"]
    assert await channel.ping() >= 0


async def test_abandoned_get_and_concurrent_requests(
    channel: GuestChannel, short_dir: Path
) -> None:
    """A get closed early is cancelled in the guest; requests run concurrently meanwhile."""
    big = short_dir / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    _stat, stream = await channel.get(str(big))
    first = await stream.__anext__()
    assert first
    await stream.aclose()
    results = await asyncio.gather(*(channel.execute(f"echo {n}") for n in range(8)))
    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(8)]
    assert channel.in_flight == 0
    assert await channel.ping() >= 0


async def test_agent_killed_mid_request_then_reconnect(agent: AgentProcess) -> None:
    """Killing the agent fails its request with GuestUnavailable; a new agent serves anew."""
    ch = GuestChannel(agent.path, QUICK)
    await ch.connect()
    task = asyncio.create_task(ch.execute("sleep 30"))
    await asyncio.sleep(0.3)
    agent.kill()
    with pytest.raises(GuestUnavailable):
        await asyncio.wait_for(task, 5)
    await agent.start()
    again = GuestChannel(agent.path, QUICK)
    await again.connect()
    assert (await again.execute("echo back")).stdout == b"back\n"
    await again.close()
    await ch.close()


async def test_agent_stopped_mid_put_leaves_no_partial_file(
    agent: AgentProcess, short_dir: Path
) -> None:
    """SIGTERM during a put fails it with GuestUnavailable and deletes the temporary file."""
    ch = GuestChannel(agent.path, QUICK)
    await ch.connect()
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"\x00" * 1024 * 1024
            started.set()

    put = asyncio.create_task(ch.put(str(short_dir / "growing"), 0o644, endless()))
    await started.wait()
    await asyncio.sleep(0.2)
    assert [p for p in short_dir.iterdir() if p.name.endswith(".part")]
    agent.terminate()
    with pytest.raises(GuestUnavailable):
        await put
    assert sorted(p.name for p in short_dir.iterdir()) == ["agent.sock"]
    await ch.close()


async def test_agent_survives_garbage_from_the_host(agent: AgentProcess) -> None:
    """Garbage gets an ERROR with request id 0; after the host reconnects, all is well."""
    reader, writer = await asyncio.open_unix_connection(str(agent.path))
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await writer.drain()
    decoder = Decoder()
    frame = await asyncio.wait_for(read_frame(reader, decoder), 2)
    assert frame.kind == Kind.ERROR and frame.request_id == 0
    assert "protocol error" in frame.str_field("message")
    writer.close()
    ch = GuestChannel(agent.path, QUICK)
    await ch.connect()
    assert (await ch.execute("echo fine")).stdout == b"fine\n"
    await ch.close()


# --- hostile guests ----------------------------------------------------------------


async def hostile(
    short_dir: Path, behaviour: Behaviour, settings: ChannelSettings = QUICK
) -> tuple[GuestChannel, FakeGuest]:
    """A channel to a fake guest (not yet connected)."""
    fake = FakeGuest(short_dir / "fake.sock", behaviour)
    await fake.__aenter__()
    return GuestChannel(fake.path, settings), fake


async def still_fine(channel: GuestChannel) -> None:
    """The channel to the well-behaved agent still works."""
    assert (await channel.execute("echo ok")).stdout == b"ok\n"


async def test_guest_sending_garbage(short_dir: Path, channel: GuestChannel) -> None:
    """Garbage instead of a hello, or after it, resets that link only."""

    async def garbage_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(os.urandom(4096))
        await writer.drain()
        await asyncio.sleep(5)

    bad, fake = await hostile(short_dir, garbage_first)
    started = time.monotonic()
    with pytest.raises(GuestUnavailable, match="garbled"):
        await bad.connect()
    assert time.monotonic() - started < 1
    await fake.__aexit__()

    async def garbage_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        await reader.read(100)
        writer.write(b"\x00" * 100)
        await writer.drain()
        await asyncio.sleep(5)

    bad, fake = await hostile(short_dir, garbage_later)
    await bad.connect()
    with pytest.raises(GuestUnavailable, match="garbled"):
        await bad.ping()
    assert bad.closed and bad.buffered == 0
    with pytest.raises(GuestUnavailable):
        await bad.execute("true")
    await fake.__aexit__()
    await still_fine(channel)


async def test_guest_claiming_four_gib(short_dir: Path, channel: GuestChannel) -> None:
    """A header claiming a 4 GiB frame resets the link at once, allocating nothing big."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = await handshake(reader, writer)
        request = await read_frame(reader, decoder)
        writer.write(HEADER.pack(MAGIC, VERSION, Kind.GET_DATA, request.request_id, 0, 2**32 - 1))
        writer.write(b"\x00" * 65536)
        await writer.drain()
        await asyncio.sleep(5)

    bad, fake = await hostile(short_dir, liar)
    await bad.connect()
    tracemalloc.start()
    try:
        with pytest.raises(GuestUnavailable, match="claims 4294967295 bytes"):
            await bad.get("/etc/hostname")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    assert bad.buffered == 0
    await fake.__aexit__()
    await still_fine(channel)


async def test_guest_dribbling_hello_one_byte_at_a_time(short_dir: Path) -> None:
    """A valid hello written one byte per write still completes the handshake."""

    async def dribbler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Decoder()
        hello = await read_frame(reader, decoder)
        for byte in hello_reply(hello.request_id, 1234.0):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)
        await answer_pings(reader, writer, decoder)

    ch, fake = await hostile(short_dir, dribbler)
    hello = await ch.connect()
    assert hello.boot_time == 1234.0 and hello.hostname == "fake"
    assert ch.buffered == 0
    assert await ch.ping() >= 0
    await ch.close()
    await fake.__aexit__()


async def test_guest_going_silent_mid_transfer(short_dir: Path, channel: GuestChannel) -> None:
    """A guest that stops sending mid-get, or stops reading mid-put, fails fast on a deadline."""

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = await handshake(reader, writer)
        request = await read_frame(reader, decoder)
        if request.fields.get("op") == "get":
            stat: dict[str, object] = {
                "size": 10**9,
                "mode": 0o644,
                "mtime": 0.0,
                "uid": 0,
                "gid": 0,
            }
            writer.write(encode(Frame(Kind.STAT, request.request_id, stat)))
            writer.write(encode(Frame(Kind.GET_DATA, request.request_id, data=b"x" * 1000)))
            await writer.drain()
        await asyncio.sleep(30)  # neither sends nor reads any more

    bad, fake = await hostile(short_dir, stalls)
    await bad.connect()
    _stat, stream = await bad.get("/big")
    assert await stream.__anext__() == b"x" * 1000
    started = time.monotonic()
    with pytest.raises(GuestUnavailable, match="no answer to get"):
        await stream.__anext__()
    assert time.monotonic() - started < 2.5

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"\x00" * 1024 * 1024

    bad = GuestChannel(fake.path, QUICK)
    await bad.connect()
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(GuestUnavailable, match="read nothing"):
            await bad.put("/big", 0o644, endless())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2.5
    assert peak < 16 * 1024 * 1024
    await fake.__aexit__()
    await still_fine(channel)


async def test_guest_flooding_output_and_unasked_frames(
    short_dir: Path, channel: GuestChannel
) -> None:
    """A flood of output stays within max_output; a frame nobody asked for resets the link."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = await handshake(reader, writer)
        request = await read_frame(reader, decoder)
        chunk = encode(Frame(Kind.STDOUT, request.request_id, data=b"y" * 1024 * 1024))
        for _ in range(64):
            writer.write(chunk)
            await writer.drain()
        writer.write(encode(Frame(Kind.EXIT, request.request_id, {"return_code": 0})))
        writer.write(encode(Frame(Kind.PONG, 999, {})))
        await writer.drain()
        await asyncio.sleep(5)

    settings = ChannelSettings(max_output=1024 * 1024, reply_timeout=2, idle_timeout=2)
    bad, fake = await hostile(short_dir, flood, settings)
    await bad.connect()
    tracemalloc.start()
    try:
        result = await bad.execute("anything")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.stdout) == 1024 * 1024 and result.stdout_truncated
    assert peak < 24 * 1024 * 1024
    with pytest.raises(GuestUnavailable, match="nobody asked for"):
        await bad.ping()
    await fake.__aexit__()
    await still_fine(channel)


async def test_guest_sending_badly_typed_fields(short_dir: Path) -> None:
    """An EXIT whose return code is a string is a protocol violation, not a crash."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = await handshake(reader, writer)
        request = await read_frame(reader, decoder)
        writer.write(encode(Frame(Kind.EXIT, request.request_id, {"return_code": "zero"})))
        await writer.drain()
        await asyncio.sleep(5)

    bad, fake = await hostile(short_dir, liar)
    await bad.connect()
    with pytest.raises(GuestUnavailable, match="protocol violation"):
        await bad.execute("true")
    await fake.__aexit__()


async def test_guest_of_another_version_is_refused(short_dir: Path) -> None:
    """A guest answering with protocol version 2 frames is refused at the handshake."""

    async def future(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Decoder()
        hello = await read_frame(reader, decoder)
        raw = bytearray(hello_reply(hello.request_id))
        raw[2] = VERSION + 1
        writer.write(bytes(raw))
        await writer.drain()
        await asyncio.sleep(5)

    bad, fake = await hostile(short_dir, future)
    with pytest.raises(GuestUnavailable, match="version 2"):
        await bad.connect()
    await fake.__aexit__()


async def test_missing_socket_is_unavailable(short_dir: Path) -> None:
    """Connecting to a socket that does not exist (domain still starting) says so."""
    with pytest.raises(GuestUnavailable, match="no channel socket"):
        await GuestChannel(short_dir / "nothing.sock", QUICK).connect()


# --- links -----------------------------------------------------------------------------


class States:
    """Records on_state calls and waits for a given state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.changed = asyncio.Event()

    def __call__(self, uuid: str, state: str, boot_time: float) -> None:
        self.calls.append((uuid, state, boot_time))
        self.changed.set()

    def latest(self, uuid: str) -> tuple[str, float] | None:
        """The last (state, boot_time) reported for uuid."""
        reports = [(state, boot) for u, state, boot in self.calls if u == uuid]
        return reports[-1] if reports else None

    async def wait_for(
        self, uuid: str, state: str, timeout: float = 10, boot_time: float | None = None
    ) -> float:
        """Wait until the latest report for uuid is state (with that boot time); return it."""
        async with asyncio.timeout(timeout):
            while True:
                latest = self.latest(uuid)
                if latest and latest[0] == state and boot_time in (None, latest[1]):
                    return latest[1]
                self.changed.clear()
                await self.changed.wait()


LINKS = LinkSettings(
    heartbeat=0.1, unresponsive_after=0.6, backoff_base=0.05, backoff_cap=0.2, channel=QUICK
)


async def test_links_follow_agent_through_absence_restart_and_silence(short_dir: Path) -> None:
    """no contact until the socket appears, ready with the boot time, unresponsive, ready again."""
    states = States()
    links = GuestLinks(states, LINKS)
    agent = AgentProcess(short_dir / "late.sock")
    links.watch("i-1", agent.path)
    try:
        await follow_agent(states, links, agent)
    finally:
        await links.close()
        agent.kill()


async def follow_agent(states: States, links: GuestLinks, agent: AgentProcess) -> None:
    """The steps of the test above."""
    assert await states.wait_for("i-1", NO_CONTACT, 2) == 0.0
    assert links.channel("i-1") is None
    await asyncio.sleep(0.3)
    await agent.start()
    boot_time = await states.wait_for("i-1", READY)
    assert abs(boot_time - (time.time() - time.monotonic())) < 120
    channel = links.channel("i-1")
    assert channel is not None
    assert (await channel.execute("echo linked")).stdout == b"linked\n"
    agent.kill()
    await states.wait_for("i-1", UNRESPONSIVE)
    assert links.channel("i-1") is None
    await agent.start()
    assert await states.wait_for("i-1", READY) == boot_time
    states_seen = [state for _, state, _ in states.calls]
    assert states_seen == [NO_CONTACT, READY, UNRESPONSIVE, READY]


async def test_links_report_new_boot_time_and_isolate_hostile_guests(short_dir: Path) -> None:
    """A guest that comes back with a new boot time is reported; a garbling guest harms no other."""
    connections = 0

    async def rebooting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        boot = 1000.0 if connections == 1 else 2000.0
        decoder = await handshake(reader, writer, boot)
        if boot == 1000.0:  # serve a while, then "reboot" (the connection drops)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answer_pings(reader, writer, decoder), 0.5)
            return
        await answer_pings(reader, writer, decoder)

    async def garbler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\xde\xad" * 1000)
        await writer.drain()

    states = States()
    links = GuestLinks(states, LINKS)
    async with (
        FakeGuest(short_dir / "a.sock", rebooting),
        FakeGuest(short_dir / "b.sock", garbler),
    ):
        try:
            links.watch("good", short_dir / "a.sock")
            links.watch("bad", short_dir / "b.sock")
            await states.wait_for("good", READY, boot_time=1000.0)
            await states.wait_for("good", READY, boot_time=2000.0)
            good = [(state, boot) for uuid, state, boot in states.calls if uuid == "good"]
            assert good == [(NO_CONTACT, 0.0), (READY, 1000.0), (READY, 2000.0)]
            assert [c for c in states.calls if c[0] == "bad"] == [("bad", NO_CONTACT, 0.0)]
            assert links.state("good") == (READY, 2000.0)
            assert links.channel("bad") is None
            links.forget("bad")
            count = len(states.calls)
            await asyncio.sleep(0.3)
            assert all(uuid != "bad" for uuid, _, _ in states.calls[count:])
            assert links.watched() == ["good"]
        finally:
            await links.close()


async def test_links_back_off_while_the_socket_is_missing(short_dir: Path) -> None:
    """Reconnect attempts wait base, 2x base, ... up to the cap (on an injected sleep)."""
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    links = GuestLinks(lambda *_: None, LinkSettings(backoff_base=0.5, backoff_cap=5), sleep=record)
    links.watch("i-2", short_dir / "never.sock")
    while len(delays) < 7:
        await asyncio.sleep(0.01)
    await links.close()
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


async def test_links_reconnect_at_once_when_the_agent_restarts(short_dir: Path) -> None:
    """A restarted agent is linked again within moments, without leaving the ready state."""
    states = States()
    links = GuestLinks(states, LinkSettings(heartbeat=30, unresponsive_after=10, channel=QUICK))
    agent = AgentProcess(short_dir / "restart.sock")
    await agent.start()
    links.watch("i-3", agent.path)
    try:
        await states.wait_for("i-3", READY)
        first = links.channel("i-3")
        assert first is not None
        agent.kill()
        await agent.start()
        async with asyncio.timeout(5):
            while (current := links.channel("i-3")) is None or current is first:
                await asyncio.sleep(0.05)
        assert (await current.execute("echo again")).stdout == b"again\n"
        assert [state for _, state, _ in states.calls] == [NO_CONTACT, READY]
    finally:
        await links.close()
        agent.kill()
