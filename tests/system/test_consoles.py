"""Consoles through real guests: console log, TCP and gRPC serial consoles, VDI, screenshots
and usage events, on real libvirtd and QEMU."""

from __future__ import annotations

import json
import os
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from client.api import JsonDict
from nodeagent.png import check_png, png_size
from tests.system.conftest import BANNER, Cluster, running, small_spec, wait_until

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A cluster whose node reports usage every second."""
    root = Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
    c = Cluster.launch(guest_image, root, usage_interval=1.0)
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def guest(cluster: Cluster) -> JsonDict:
    """One booted guest (SPICE display, the default), shared by the tests below."""
    with cluster.client() as client:
        inst = client.create(small_spec("console-vm"))
        inst = client.wait(inst["uuid"], running, timeout=120)
    cluster.wait_banner(inst["uuid"])
    return inst


def read_until(sock: socket.socket, wanted: bytes, timeout: float = 30) -> bytes:
    """Read from a socket until ``wanted`` shows up."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = None
        if time.monotonic() > deadline or data == b"":
            raise AssertionError(f"never saw {wanted!r}; saw {seen[-300:]!r}")
        seen += data or b""
    return seen


def test_console_data_has_the_banner_and_exact_tails(cluster: Cluster, guest: JsonDict) -> None:
    """Console data contains the boot banner; length N gives exactly the log's last N bytes."""
    uuid = guest["uuid"]
    log = cluster.node_dir / "instances" / uuid / "console.log"
    with cluster.client() as client:
        for _ in range(20):
            before = log.read_bytes()
            whole, tail = client.console_data(uuid, -1), client.console_data(uuid, 100)
            if log.read_bytes() == before:
                break  # the guest wrote nothing meanwhile: a fair comparison
            time.sleep(0.5)
        assert BANNER.encode() in whole
        assert whole == before and tail == before[-100:]
        assert client.console_data(uuid) == before[-10240:]


def test_tcp_console_port_is_an_interactive_shell(cluster: Cluster, guest: JsonDict) -> None:
    """A TCP client on console_port sees the guest's shell output and can type into it."""
    with cluster.client() as client:
        port = client.get(guest["uuid"])["console_port"]
    assert 30000 <= port <= 50000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\recho mc-tcp-$((6*7))\r")
        read_until(sock, b"mc-tcp-42")


def test_grpc_console_is_an_interactive_shell(cluster: Cluster, guest: JsonDict) -> None:
    """The gRPC Attach stream, relayed by the node agent, reaches the same shell."""
    keys: queue.Queue[bytes | None] = queue.Queue()

    def keystrokes() -> Iterator[bytes]:
        while (data := keys.get()) is not None:
            yield data

    seen = b""
    with cluster.client() as client:
        output = client.attach(guest["uuid"], keystrokes())
        keys.put(b"\recho mc-grpc-$((6*7))\r")
        timer = threading.Timer(30, output.cancel)
        timer.start()
        try:
            for data in output:
                seen += data
                if b"mc-grpc-42" in seen:
                    break
        except grpc.RpcError as exc:
            raise AssertionError(f"console ended: {exc}; saw {seen[-300:]!r}") from exc
        finally:
            timer.cancel()
            keys.put(None)
            output.cancel()
    assert b"mc-grpc-42" in seen
    # The shell's output goes to the console log as well.
    wait_until(lambda: "mc-grpc-42" in cluster.console(guest["uuid"]), 15, "output in the log")


def test_clearing_empties_the_log_and_records_it(cluster: Cluster, guest: JsonDict) -> None:
    """Clearing empties the console log and adds an audit event."""
    uuid = guest["uuid"]
    with cluster.client() as client:
        client.clear_console(uuid)
        assert BANNER.encode() not in client.console_data(uuid, -1)
        events = client.events(uuid, "audit")
    assert BANNER not in cluster.console(uuid)
    assert "console log cleared" in [e["message"] for e in events]


def test_spice_vv_file_and_handshake(cluster: Cluster, guest: JsonDict) -> None:
    """The .vv file names spice, the node's address and vdi_port and has a password; SPICE
    answers a link message."""
    with cluster.client() as client:
        helper = client.vdi_console_helper(guest["uuid"])
        inst = client.get(guest["uuid"])
    lines = helper["vv"].splitlines()
    assert lines[0] == "[virt-viewer]"
    assert {"type=spice", "host=127.0.0.1", f"port={inst['vdi_port']}"} <= set(lines)
    assert "delete-this-file=1" in lines
    assert not any(line.startswith("tls-port=") for line in lines)
    assert len(vv_password(helper["vv"])) == 20
    # A SPICE link header ("REDQ", protocol 2.2) and a link message for the main channel.
    link = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)
    header = b"REDQ" + struct.pack("<III", 2, 2, len(link))
    with socket.create_connection(("127.0.0.1", inst["vdi_port"]), timeout=10) as sock:
        sock.sendall(header + link)
        assert read_until(sock, b"REDQ", 10).startswith(b"REDQ")


def rfb_security_types(sock: socket.socket) -> list[int]:
    """Do the RFB 3.8 version handshake; return the security types the server offers."""
    banner = read_exactly(sock, 12)
    assert banner == b"RFB 003.008\n", banner
    sock.sendall(b"RFB 003.008\n")
    (count,) = read_exactly(sock, 1)
    assert count > 0, "the server refused the connection"
    return list(read_exactly(sock, count))


def vnc_authenticates(port: int, password: str) -> bool:
    """Whether VNC authentication (type 2, a DES-encrypted challenge) with password succeeds."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert 2 in rfb_security_types(sock)
        sock.sendall(b"\x02")
        challenge = read_exactly(sock, 16)
        # VNC's DES key: the password in 8 bytes, each byte's bits reversed (three times
        # over: triple DES with one key is DES).
        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
        encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        sock.sendall(encryptor.update(challenge) + encryptor.finalize())
        (result,) = struct.unpack(">I", read_exactly(sock, 4))
    return int(result) == 0


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a socket (AssertionError if it closes first)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def vv_password(vv: str) -> str:
    """The value of a .vv file's password= line."""
    (password,) = [line[9:] for line in vv.splitlines() if line.startswith("password=")]
    return password


def test_vnc_display_asks_for_the_password_of_the_vv_file_new_at_power_on(
    cluster: Cluster,
) -> None:
    """A vnc instance's .vv file says vnc and carries a password; its port offers only VNC
    authentication, which that password passes; after off/on only the new password does,
    and no instance view shows either."""
    with cluster.client() as client:
        inst = client.create(small_spec("vnc-vm", video={"vdi": "vnc"}, side_channels=[]))
        uuid = inst["uuid"]
        inst = client.wait(uuid, running, timeout=120)
        helper = client.vdi_console_helper(uuid)
        lines = set(helper["vv"].splitlines())
        assert {"type=vnc", "host=127.0.0.1", f"port={inst['vdi_port']}"} <= lines
        first = vv_password(helper["vv"])
        assert len(first) == 8
        with socket.create_connection(("127.0.0.1", inst["vdi_port"]), timeout=10) as sock:
            assert rfb_security_types(sock) == [2]  # VNC authentication, never 1 (none)
        assert vnc_authenticates(inst["vdi_port"], first)

        client.power(uuid, "off")
        client.wait(uuid, lambda i: i["power_state"] == "off", timeout=60)
        client.power(uuid, "on")
        inst = client.wait(uuid, running, timeout=60)
        second = vv_password(client.vdi_console_helper(uuid)["vv"])
        assert second != first
        assert not vnc_authenticates(inst["vdi_port"], first)
        assert vnc_authenticates(inst["vdi_port"], second)
        views = json.dumps([client.get(uuid), client.list_instances()])
        assert first not in views and second not in views
        client.delete(uuid)


def test_screenshot_is_a_png_of_the_display(cluster: Cluster, guest: JsonDict) -> None:
    """A screenshot is a downloadable PNG blob, as large as libvirt's own screenshot."""
    uuid = guest["uuid"]
    with cluster.client() as client:
        blob_uuid = client.screenshot(uuid)
        assert client.blob(blob_uuid)["state"] == "created"
        png = b"".join(client.download_blob(blob_uuid))
    width, height = check_png(png)
    reference = cluster.root / "virsh-shot"
    subprocess.run(
        ["virsh", "-c", "qemu:///system", "screenshot", f"mc-{uuid}", str(reference)],
        check=True,
        capture_output=True,
    )
    assert png_size(reference.read_bytes()) == (width, height)


def _usage(client_events: list[JsonDict]) -> list[JsonDict]:
    return [e for e in client_events if e["message"] == "usage"]


def test_usage_events_grow_with_guest_work(cluster: Cluster, guest: JsonDict) -> None:
    """Usage events arrive every interval; CPU time and disk bytes grow after the guest writes."""
    uuid = guest["uuid"]
    with cluster.client() as client:
        wait_until(lambda: len(_usage(client.events(uuid, "usage", 5))) >= 2, 30, "usage events")
        first = _usage(client.events(uuid, "usage", 1))[0]
        extra = first["extra"]
        assert set(extra) == {"cpu usage", "disk usage", "network usage"}
        assert set(extra["cpu usage"]) == {"cpu time ns", "system time ns", "user time ns"}
        vda = extra["disk usage"]["vda"]
        op = client.execute(uuid, "dd if=/dev/urandom of=/root/usage.bin bs=1M count=16 && sync")
        done = client.wait_operation(op["uuid"], timeout=120)
        assert done["results"]["0"]["return-code"] == 0, done

        def grown() -> bool:
            latest = _usage(client.events(uuid, "usage", 1))[0]["extra"]
            now = latest["disk usage"]["vda"]
            return bool(
                latest["cpu usage"]["cpu time ns"] > extra["cpu usage"]["cpu time ns"]
                and now["write bytes"] >= vda["write bytes"] + 16 * 1024 * 1024
                and now["actual bytes on disk"] >= vda["actual bytes on disk"] + 8 * 1024 * 1024
            )

        wait_until(grown, 30, "usage counters to grow after the guest wrote 16 MiB")
