"""The in-guest agent in a real guest, reached with GuestChannel through its sf-agent socket.

libvirt's channel socket serves one client at a time and the node agent keeps
a link on it, so once the guest is up these tests stop the node agent (guests
keep running without it), talk to the guest agent directly, and start the
node agent again at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nodeagent.guest.channel import ChannelSettings, GuestChannel, GuestUnavailable
from tests.system.conftest import Cluster, running, settled, small_spec

pytestmark = pytest.mark.system

SETTINGS = ChannelSettings(connect_timeout=5, reply_timeout=10, execute_grace=10)


def socket_path(cluster: Cluster, uuid: str) -> Path:
    """The host end of the instance's sf-agent channel."""
    return cluster.node_dir / "instances" / uuid / "sf-agent.sock"


async def connect(path: Path, timeout: float = 90) -> GuestChannel:
    """Connect as soon as the guest agent answers (retrying with a pause between tries)."""
    deadline = time.monotonic() + timeout
    while True:
        channel = GuestChannel(path, SETTINGS)
        try:
            await channel.connect()
            return channel
        except GuestUnavailable:
            await channel.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def guest(cluster: Cluster) -> Iterator[tuple[str, float]]:
    """A booted instance with an sf-agent channel (node agent stopped): UUID, creation time."""
    created = time.time()
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("agent"))["uuid"], settled, timeout=180)
        assert running(inst), cluster.logs()
    cluster.wait_banner(inst["uuid"])
    cluster.stop("nodeagent")
    try:
        yield inst["uuid"], created
    finally:
        cluster.start_node()
        cluster.wait_node_connected(2)


async def test_handshake_and_execute(cluster: Cluster, guest: tuple[str, float]) -> None:
    """The hello carries the guest's boot time; `cat /etc/os-release` shows Debian."""
    uuid, created = guest
    channel = await connect(socket_path(cluster, uuid))
    try:
        assert channel.hello is not None
        assert created - 5 <= channel.hello.boot_time <= time.time()
        assert channel.hello.hostname
        assert await channel.is_system_running() == "running"
        result = await channel.execute("cat /etc/os-release")
        assert result.return_code == 0
        assert b"Debian" in result.stdout
        failed = await channel.execute("ls /nonexistent")
        assert failed.return_code != 0 and b"No such file" in failed.stderr
    finally:
        await channel.close()


async def test_put_and_get_ten_mib(cluster: Cluster, guest: tuple[str, float]) -> None:
    """10 MiB of random bytes go into the guest with their mode and come back identical."""
    uuid, _ = guest
    data = os.urandom(10 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), 1024 * 1024):
            yield data[offset : offset + 1024 * 1024]

    channel = await connect(socket_path(cluster, uuid))
    try:
        assert await channel.put("/root/random.bin", 0o640, chunks()) == len(data)
        listing = await channel.execute("stat -c '%a %s' /root/random.bin")
        assert listing.stdout == f"640 {len(data)}\n".encode()
        stat, stream = await channel.get("/root/random.bin")
        assert stat["size"] == len(data) and stat["mode"] == 0o640
        digest = hashlib.sha512()
        async for chunk in stream:
            digest.update(chunk)
        assert digest.digest() == hashlib.sha512(data).digest()
    finally:
        await channel.close()


async def test_agent_killed_in_guest_is_restarted(
    cluster: Cluster, guest: tuple[str, float]
) -> None:
    """Killing the agent fails the channel cleanly; the guest's init restarts it."""
    uuid, _ = guest
    path = socket_path(cluster, uuid)
    channel = await connect(path)
    boot_time = channel.hello.boot_time if channel.hello else 0.0
    started = time.monotonic()
    with pytest.raises(GuestUnavailable):
        await channel.execute("pkill -f guestagent.serve; sleep 60", timeout=60)
    assert time.monotonic() - started < 30
    assert channel.closed
    await channel.close()
    again = await connect(path, timeout=60)
    try:
        assert again.hello is not None and again.hello.boot_time == boot_time
        assert (await again.execute("echo back")).stdout == b"back\n"
    finally:
        await again.close()
