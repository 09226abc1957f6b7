"""A throwaway single-member etcd on loopback, for the tests that need a real one.

It runs Debian's ``etcd`` (etcd-server 3.4) on two free 127.0.0.1 ports with
its data in a temporary folder, and is stopped (and the folder removed) by
``stop``. Tests share one server per session and keep apart by key prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD = Path("/usr/bin/etcd")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcd_or_skip() -> None:
    """Skip the test when etcd is not installed (in CI it must be: fail there)."""
    if ETCD.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{ETCD} must be installed in CI (tools/install.sh: etcd-server)")
    pytest.skip(f"{ETCD} is not installed (apt-get install etcd-server)")


@dataclass
class TlsFiles:
    """The PEM files an etcd serving TLS uses: its CA, its certificate and key.

    etcd then asks every client for a certificate signed by that CA too.
    """

    ca: Path
    cert: Path
    key: Path


@dataclass
class EtcdServer:
    """A running etcd: its client endpoint ("127.0.0.1:port") and process."""

    endpoint: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def stop(self) -> None:
        """Stop etcd and remove its data."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_etcd(data_dir: Path, tls: TlsFiles | None = None, timeout: float = 20.0) -> EtcdServer:
    """Start etcd with its data in data_dir and wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    client, peer = free_port(), free_port()
    scheme = "https" if tls else "http"
    client_url = f"{scheme}://127.0.0.1:{client}"
    peer_url = f"http://127.0.0.1:{peer}"
    argv = [
        str(ETCD),
        "--name=test",
        f"--data-dir={data_dir / 'member'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        # Tests only: etcd does not fsync its log. Tests do not lose power, and
        # fsyncs on this shared 2-core machine would measure the disk, not us.
        "--unsafe-no-fsync",
        "--logger=zap",
        "--log-level=warn",
    ]
    if tls:
        argv += [
            f"--trusted-ca-file={tls.ca}",
            f"--cert-file={tls.cert}",
            f"--key-file={tls.key}",
            "--client-cert-auth",
        ]
    log = data_dir / "etcd.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = EtcdServer(f"127.0.0.1:{client}", process, data_dir, log)
    deadline = time.monotonic() + timeout
    while not _ready(server, tls):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"etcd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return server


def _ready(server: EtcdServer, tls: TlsFiles | None) -> bool:
    """Whether the server says it is healthy (or, with TLS, accepts connections)."""
    host, port = server.endpoint.split(":")
    if tls:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return False
        return True
    try:
        with urllib.request.urlopen(f"http://{server.endpoint}/health", timeout=1) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")
    except OSError:
        return False


@dataclass
class EtcdCluster:
    """A running etcd cluster of several members, each an EtcdServer."""

    members: list[EtcdServer]

    @property
    def endpoints(self) -> list[str]:
        """Every member's client endpoint ("127.0.0.1:port")."""
        return [m.endpoint for m in self.members]

    def kill(self, index: int) -> None:
        """kill -9 one member (its data stays; the others go on as a quorum)."""
        process = self.members[index].process
        process.kill()
        process.wait()

    def stop(self) -> None:
        """Stop every member and remove its data."""
        for member in self.members:
            member.stop()


def start_etcd_cluster(root: Path, size: int = 3, timeout: float = 30.0) -> EtcdCluster:
    """Start a size-member etcd cluster on loopback, data under root, and wait for its leader.

    Every member runs with ``--unsafe-no-fsync`` (as start_etcd does): tests do
    not lose power, and three members fsyncing on this shared 2-core machine
    would measure its disk. The members start together (etcd waits for a
    quorum of its initial cluster), and each is asked for health, which etcd
    answers true only once the cluster has a leader.
    """
    ports = [(free_port(), free_port()) for _ in range(size)]
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(
        f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports, strict=True)
    )
    members: list[EtcdServer] = []
    for name, (client, peer) in zip(names, ports, strict=True):
        data_dir = root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        argv = [
            str(ETCD),
            f"--name={name}",
            f"--data-dir={data_dir / 'member'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=minicloud-test",
            "--unsafe-no-fsync",  # tests only: see above
            "--logger=zap",
            "--log-level=warn",
        ]
        log = data_dir / "etcd.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        members.append(EtcdServer(f"127.0.0.1:{client}", process, data_dir, log))
    cluster = EtcdCluster(members)
    deadline = time.monotonic() + timeout
    while not all(_ready(m, None) for m in members):
        dead = [m for m in members if m.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(m.log.read_text()[-1500:] for m in members)
            cluster.stop()
            raise RuntimeError(f"the etcd cluster did not start: {logs}")
        time.sleep(0.2)
    return cluster
