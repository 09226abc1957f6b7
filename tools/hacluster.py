"""Several control-plane replicas on an etcd cluster, as real processes on 127.0.0.1.

``HaCluster`` starts a three-member etcd cluster (Debian's etcd on loopback
ports; clients over TLS with the cluster's CA, peers plaintext on loopback),
control-plane replicas on it sharing one token signing key, and node agents
(the fake hypervisor by default, for scale) that dial every replica. It runs
etcd with ``--unsafe-no-fsync``: for tests and benchmarks on this shared
machine, where fsyncs measure the disk and nobody pulls the power; the HA
demo (tools/demo_ha.sh) does not. Used by the failover system tests and
tools/bench_replicas.py.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from client.api import Client
from client.cadir import CaDir
from tools.cluster import BIN, free_port, wait_until

ETCD = Path("/usr/bin/etcd")


@dataclass
class Replica:
    """One control-plane replica's addresses."""

    name: str
    api: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    node_api: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    metrics_port: int = field(default_factory=free_port)


@dataclass
class EtcdMember:
    """One etcd member's name and ports."""

    name: str
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"


@dataclass
class HaCluster:
    """etcd members, control-plane replicas and node agents, each a subprocess."""

    root: Path
    replicas: list[Replica] = field(default_factory=list)
    members: list[EtcdMember] = field(default_factory=list)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Extra environment for every replica (timeouts, say).
    replica_env: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> CaDir:
        return CaDir(self.root / "ca")

    @property
    def ca_file(self) -> str:
        return str(self.ca.path / "ca.crt")

    @property
    def apis(self) -> str:
        """Every replica's public address, comma-separated (what clients dial)."""
        return ",".join(r.api for r in self.replicas)

    @property
    def node_apis(self) -> str:
        return ",".join(r.node_api for r in self.replicas)

    @classmethod
    def launch(
        cls,
        base: Path,
        replicas: int = 3,
        members: int = 3,
        replica_env: dict[str, str] | None = None,
    ) -> HaCluster:
        """Make the CA, start etcd and the replicas; wait until one of them leads.

        With ``members=0`` there is no etcd: one replica on its own RocksDB (the
        default store), for comparisons.
        """
        root = base / secrets.token_hex(4)
        root.mkdir(parents=True)
        cluster = cls(root=root, replica_env=replica_env or {})
        cluster.members = [EtcdMember(f"etcd{i}") for i in range(members)]
        cluster.replicas = [Replica(f"replica-{i}") for i in range(replicas)]
        now = datetime.datetime.now(datetime.UTC)
        cluster.ca.init(now)
        for name in ("controlplane", "etcd"):
            cluster.ca.issue("server", name, now, sans=("127.0.0.1", "localhost"))
        cluster.ca.issue("node", "etcd-client", now)
        try:
            if members:
                cluster.start_etcd()
            for index in range(replicas):
                cluster.start_replica(index)
                if index == 0:  # the first makes the shared signing key
                    public = root / "token-signing-key.pub"
                    wait_until(public.exists, 60, "the first replica's token signing key")
            cluster.wait_leader()
        except Exception:
            cluster.shutdown(keep=True)
            raise
        return cluster

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )

    def start_etcd(self) -> None:
        """Start every etcd member and wait until the cluster answers."""
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        issued = self.ca.issued
        for member in self.members:
            self.start_member(member, initial, issued)
        wait_until(self._etcd_healthy, 60, "the etcd cluster to elect a leader")

    def start_member(
        self, member: EtcdMember, initial: str = "", issued: Path | None = None
    ) -> None:
        """Start one etcd member (again, after a kill: its data is kept)."""
        issued = issued or self.ca.issued
        initial = initial or ",".join(
            f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members
        )
        data = self.root / member.name
        state = "existing" if (data / "member").exists() else "new"
        peer = f"http://127.0.0.1:{member.peer_port}"
        self._start(
            member.name,
            [
                str(ETCD),
                f"--name={member.name}",
                f"--data-dir={data}",
                f"--listen-client-urls={member.url}",
                f"--advertise-client-urls={member.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                f"--initial-cluster-state={state}",
                f"--trusted-ca-file={self.ca_file}",
                f"--cert-file={issued / 'etcd.crt'}",
                f"--key-file={issued / 'etcd.key'}",
                "--client-cert-auth",
                # Tests and benchmarks only (see the module docstring).
                "--unsafe-no-fsync",
                "--logger=zap",
                "--log-level=warn",
            ],
            {},
        )

    def _etcd_healthy(self) -> bool:
        """Whether some member answers its health probe with ``true`` (a leader is elected)."""
        for member in self.members:
            proc = self.procs.get(member.name)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"etcd member {member.name} exited: {self.logs()}")
        context = ssl.create_default_context(cafile=self.ca_file)
        issued = self.ca.issued
        context.load_cert_chain(issued / "etcd-client.crt", issued / "etcd-client.key")
        for member in self.members:
            try:
                with urllib.request.urlopen(
                    f"{member.url}/health", timeout=2, context=context
                ) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                continue
        return False

    def start_replica(self, index: int) -> None:
        """Start (or restart) replica ``index``."""
        replica = self.replicas[index]
        issued = self.ca.issued
        etcd = (
            {
                "MINICLOUD_STORE": "etcd:" + ",".join(m.url for m in self.members),
                "MINICLOUD_ETCD_CA": self.ca_file,
                "MINICLOUD_ETCD_CERT": str(issued / "etcd-client.crt"),
                "MINICLOUD_ETCD_KEY": str(issued / "etcd-client.key"),
            }
            if self.members
            else {}
        )
        self._start(
            replica.name,
            [str(BIN / "minicloud-controlplane")],
            {
                **etcd,
                "MINICLOUD_NAME": replica.name,
                "MINICLOUD_LISTEN": replica.api,
                "MINICLOUD_NODE_LISTEN": replica.node_api,
                "MINICLOUD_METRICS_LISTEN": f"127.0.0.1:{replica.metrics_port}",
                "MINICLOUD_DATA_DIR": str(self.root / replica.name),
                "MINICLOUD_TOKEN_SIGNING_KEY": str(self.root / "token-signing-key"),
                "MINICLOUD_SYSTEM_KEY": self.key,
                "MINICLOUD_TLS_CERT": str(issued / "controlplane.crt"),
                "MINICLOUD_TLS_KEY": str(issued / "controlplane.key"),
                "MINICLOUD_TLS_CA": self.ca_file,
                "MINICLOUD_HEARTBEAT_INTERVAL": "1",
                "MINICLOUD_NODE_TIMEOUT": "6",
                **self.replica_env,
            },
        )

    def start_node(
        self, name: str, hypervisor: str = "fake", env: dict[str, str] | None = None
    ) -> None:
        """Start a node agent that dials every replica's node listener."""
        if not (self.ca.issued / f"{name}.crt").exists():
            self.ca.issue("node", name, datetime.datetime.now(datetime.UTC))
        issued = self.ca.issued
        self._start(
            name,
            [str(BIN / "minicloud-nodeagent")],
            {
                "MINICLOUD_NODE_CONTROL_PLANE": self.node_apis,
                "MINICLOUD_NODE_TLS_CERT": str(issued / f"{name}.crt"),
                "MINICLOUD_NODE_TLS_KEY": str(issued / f"{name}.key"),
                "MINICLOUD_NODE_TLS_CA": self.ca_file,
                "MINICLOUD_NODE_NAME": name,
                "MINICLOUD_NODE_HYPERVISOR": hypervisor,
                "MINICLOUD_NODE_DATA_DIR": str(self.root / name),
                "MINICLOUD_NODE_BACKOFF_BASE": "0.2",
                "MINICLOUD_NODE_BACKOFF_CAP": "1",
                "MINICLOUD_NODE_METRICS_LISTEN": "off",
                "MINICLOUD_NODE_CPUS": "1024",
                "MINICLOUD_NODE_MEMORY_MB": str(1024 * 1024),
                **(env or {}),
            },
        )

    def metrics(self, index: int) -> str:
        """Replica ``index``'s Prometheus text ("" when it does not answer)."""
        url = f"http://127.0.0.1:{self.replicas[index].metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    def leader(self) -> int | None:
        """The index of the replica whose metrics say it leads, if one does."""
        for index, replica in enumerate(self.replicas):
            if replica.name not in self.procs:
                continue
            if any(_leads(line) for line in self.metrics(index).splitlines()):
                return index
        return None

    def wait_leader(self, timeout: float = 30) -> int:
        """Wait until some replica leads; its index."""
        found: list[int] = []

        def leads() -> bool:
            index = self.leader()
            if index is not None:
                found.append(index)
            return index is not None

        wait_until(leads, timeout, "a replica to lead")
        return found[-1]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process (kill -9 by default) and forget it."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def client(self, timeout: float = 60, first: int = 0) -> Client:
        """A client of the system namespace that knows every replica, starting at ``first``."""
        apis = [r.api for r in self.replicas]
        turn = first % len(apis)
        return Client(
            apis[turn:] + apis[:turn], "system", self.key, timeout=timeout, ca_file=self.ca_file
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def report(self) -> str:
        """Each process and whether it runs, as JSON (for failure messages)."""
        return json.dumps({n: p.poll() is None for n, p in self.procs.items()})

    def shutdown(self, keep: bool = False) -> None:
        """Stop node agents, replicas and etcd; remove the folder unless kept."""
        order = [n for n in self.procs if n.startswith("replica-") or n.startswith("etcd")]
        for name in [*(n for n in self.procs if n not in order), *order]:
            self.kill(name, signal.SIGTERM)
        if not keep and os.environ.get("MINICLOUD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(self.root, ignore_errors=True)


def _leads(line: str) -> bool:
    """Whether a metrics line is the leader gauge at 1 (``minicloud_leader 1.0``)."""
    name, _, value = line.partition(" ")
    try:
        return name == "minicloud_leader" and float(value) == 1.0
    except ValueError:
        return False


def main() -> None:
    """Start an HA cluster with one fake node, print its addresses, wait for ^C."""
    cluster = HaCluster.launch(Path("/var/tmp/mc-ha"))
    cluster.start_node("ha-node-0")
    print(json.dumps({"apis": cluster.apis, "root": str(cluster.root), "key": cluster.key}))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.shutdown()


if __name__ == "__main__":
    main()
