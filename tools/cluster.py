"""A local minicloud for tests, benchmarks and demos: real processes on 127.0.0.1.

``Cluster`` starts an image server (serving a guest image as debian:11 and
debian:12), a control plane and a node agent as subprocesses, with their logs
in the cluster's folder, and offers the few helpers tests and benchmarks share.
Each process serves its metrics on a free port of its own (``metrics_ports``,
``metrics(proc)``). Like a real deployment it runs TLS: a CA in the cluster's
``ca`` folder (``minicloud-ca``'s layout) issues the control plane's and the
gateway's server certificates and each node agent's node certificate, and
node agents dial the node listener; ``tls=False`` runs everything plaintext.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.api import Client
from client.cadir import CaDir

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BANNER = "minicloud-guest: boot complete"
# The REST gateway's own certificate (kind gateway): it vouches for callers' addresses.
GATEWAY_CERT = "rest-gateway"


def build_guest_image() -> Path:
    """The bootable guest image (built once, then cached)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_guest_image.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    """Run virsh against qemu:///system."""
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, check=False
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll predicate until it holds, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


@dataclass
class Cluster:
    """A control plane, a node agent and an image server, as real processes."""

    root: Path
    image: Path
    api: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    # The control plane's node listener (node certificates only), used with TLS.
    node_api: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    tls: bool = True
    image_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    node_name: str = field(default_factory=lambda: f"sys-{uuidlib.uuid4().hex[:6]}")
    # Seconds between the node's usage events.
    usage_interval: float = 60.0
    # Extra environment for the control plane and the node agent (network settings, say).
    controlplane_env: dict[str, str] = field(default_factory=dict)
    node_env: dict[str, str] = field(default_factory=dict)
    # The system namespace's key: the client and the node agent log in with it.
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Process name -> the port its /metrics is served on.
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    @property
    def ca(self) -> CaDir:
        return CaDir(self.root / "ca")

    @property
    def ca_file(self) -> str:
        """The cluster's CA certificate (what clients trust)."""
        return str(self.ca.path / "ca.crt")

    def make_ca(self) -> None:
        """The CA and the server certificates of the control plane and the gateway."""
        now = datetime.datetime.now(datetime.UTC)
        self.ca.init(now)
        for name in ("controlplane", "gateway"):
            self.ca.issue("server", name, now, sans=("127.0.0.1", "localhost"))
        self.ca.issue("gateway", GATEWAY_CERT, now)

    def _tls_env(self, prefix: str, name: str) -> dict[str, str]:
        """PREFIX_TLS_* naming an issued certificate, or PREFIX_PLAINTEXT=1 without TLS."""
        if not self.tls:
            return {f"{prefix}_PLAINTEXT": "1"}
        issued = self.ca.issued
        return {
            f"{prefix}_TLS_CERT": str(issued / f"{name}.crt"),
            f"{prefix}_TLS_KEY": str(issued / f"{name}.key"),
            f"{prefix}_TLS_CA": self.ca_file,
        }

    def _gateway_cert_env(self) -> dict[str, str]:
        """The gateway's own certificate, with which it vouches for its callers' addresses."""
        if not self.tls:
            return {}
        issued = self.ca.issued
        return {
            "MINICLOUD_GATEWAY_CLIENT_CERT": str(issued / f"{GATEWAY_CERT}.crt"),
            "MINICLOUD_GATEWAY_CLIENT_KEY": str(issued / f"{GATEWAY_CERT}.key"),
        }

    def ssl_context(self) -> ssl.SSLContext | None:
        """What an HTTPS client of the gateway trusts (None without TLS)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    def _metrics_listen(self, name: str) -> str:
        """A fresh metrics address for a process (kept in metrics_ports)."""
        self.metrics_ports[name] = free_port()
        return f"127.0.0.1:{self.metrics_ports[name]}"

    def metrics(self, proc: str = "controlplane", path: str = "/metrics") -> str:
        """What a process's metrics listener answers at path (the Prometheus text for /metrics)."""
        url = f"http://127.0.0.1:{self.metrics_ports[proc]}{path}"  # plain: a management port
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # The child keeps its own copy of the log's descriptor; the parent's is closed.
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )

    def start_images(self) -> None:
        images = self.root / "images"
        images.mkdir(exist_ok=True)
        for name in ("debian-11", "debian-12"):
            link = images / f"{name}.qcow2"
            if not link.exists():
                link.symlink_to(self.image)
        self._start(
            "images",
            [
                sys.executable,
                str(ROOT / "tools" / "serve_images.py"),
                "--dir",
                str(images),
                "--port",
                str(self.image_port),
            ],
            {},
        )

    def start_controlplane(self) -> None:
        self._start(
            "controlplane",
            [str(BIN / "minicloud-controlplane")],
            {
                "MINICLOUD_LISTEN": self.api,
                "MINICLOUD_DATA_DIR": str(self.root / "controlplane"),
                "MINICLOUD_NAME": "cp-system-test",
                "MINICLOUD_HEARTBEAT_INTERVAL": "1",
                "MINICLOUD_NODE_TIMEOUT": "6",
                "MINICLOUD_SYSTEM_KEY": self.key,
                "MINICLOUD_METRICS_LISTEN": self._metrics_listen("controlplane"),
                "MINICLOUD_NODE_LISTEN": self.node_api,
                **self._tls_env("MINICLOUD", "controlplane"),
                **self.controlplane_env,
            },
        )

    @property
    def rest_url(self) -> str:
        """The Shaken Fist REST gateway's URL (SHAKENFIST_API_URL)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.gateway_port}"

    def rest_env(self, namespace: str = "system", key: str | None = None) -> dict[str, str]:
        """SHAKENFIST_* variables for shakenfist-client against this cluster."""
        return {
            "SHAKENFIST_API_URL": self.rest_url,
            "SHAKENFIST_NAMESPACE": namespace,
            "SHAKENFIST_KEY": key if key is not None else self.key,
            **({"REQUESTS_CA_BUNDLE": self.ca_file} if self.tls else {}),
        }

    def start_gateway(self) -> None:
        """Start the gateway with the control plane's token public key (made at its start)."""
        public = self.root / "controlplane" / "token-signing-key.pub"
        wait_until(public.exists, 30, "the control plane's token public key")
        self._start(
            "gateway",
            [sys.executable, "-m", "gateway"],
            {
                "MINICLOUD_GATEWAY_LISTEN": f"127.0.0.1:{self.gateway_port}",
                "MINICLOUD_GATEWAY_API": self.api,
                "MINICLOUD_GATEWAY_METRICS_LISTEN": self._metrics_listen("gateway"),
                **self._tls_env("MINICLOUD_GATEWAY", "gateway"),
                **self._gateway_cert_env(),
                "MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS": str(public),
            },
        )

    def start_node(
        self,
        proc: str = "nodeagent",
        node_name: str = "",
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a node agent (the cluster's own, or another one with its name and folder).

        With TLS it gets a node certificate for its name (issued once) and dials the
        node listener; without, it logs in with the system key on the public one.
        """
        name = node_name or self.node_name
        if self.tls and not (self.ca.issued / f"{name}.crt").exists():
            self.ca.issue("node", name, datetime.datetime.now(datetime.UTC))
        self._start(
            proc,
            [str(BIN / "minicloud-nodeagent")],
            {
                "MINICLOUD_NODE_CONTROL_PLANE": self.node_api if self.tls else self.api,
                **({} if self.tls else {"MINICLOUD_NODE_KEY": self.key}),
                **self._tls_env("MINICLOUD_NODE", name),
                "MINICLOUD_NODE_NAME": name,
                "MINICLOUD_NODE_DATA_DIR": str(data_dir or self.node_dir),
                "MINICLOUD_NODE_IMAGE_URL_TEMPLATE": f"http://127.0.0.1:{self.image_port}/{{name}}-{{version}}.qcow2",
                "MINICLOUD_NODE_BACKOFF_BASE": "0.2",
                "MINICLOUD_NODE_BACKOFF_CAP": "1",
                "MINICLOUD_NODE_USAGE_INTERVAL": str(self.usage_interval),
                "MINICLOUD_NODE_METRICS_LISTEN": self._metrics_listen(proc),
                # Its own host-wide claims file, so test clusters never meet the host's
                # (a test of clusters sharing a host gives them one in node_env).
                "MINICLOUD_NODE_NETWORK_CLAIMS": str(self.root / "network-claims.json"),
                **self.node_env,
                **(env or {}),
            },
        )

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def client(self) -> Client:
        if not self.tls:
            return Client(self.api, "system", self.key, timeout=120, plaintext=True)
        return Client(self.api, "system", self.key, timeout=120, ca_file=self.ca_file)

    def wait_node_connected(self, connections: int = 1, proc: str = "nodeagent") -> None:
        def connected() -> bool:
            path = self.root / f"{proc}.log"
            log = path.read_text(errors="replace") if path.exists() else ""
            return log.count("connected to control plane") >= connections

        wait_until(connected, 30, "the node agent to connect")

    def wait_gateway(self) -> None:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.gateway_port)) == 0

        wait_until(listening, 30, "the REST gateway to listen")

    def console(self, uuid: str) -> str:
        path = self.node_dir / "instances" / uuid / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_banner(self, uuid: str, count: int = 1, timeout: float = 120) -> None:
        wait_until(
            lambda: self.console(uuid).count(BANNER) >= count,
            timeout,
            f"boot banner #{count} on the console of {uuid}",
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    @classmethod
    def launch(
        cls,
        image: Path,
        base: Path = Path("/var/lib/mc/c"),
        usage_interval: float = 60.0,
        controlplane_env: dict[str, str] | None = None,
        node_env: dict[str, str] | None = None,
        tls: bool = True,
        node_name: str = "",
    ) -> Cluster:
        """Start an image server, a control plane and a node agent in a new folder.

        Keep ``base`` short: guest channel sockets live under it, and unix
        socket paths are limited to 107 bytes.
        """
        root = base / uuidlib.uuid4().hex[:8]
        root.mkdir(parents=True)
        for folder in (base.parent, base, root):
            folder.chmod(0o755)  # QEMU runs as another user and must reach the disks
        cluster = cls(
            root=root,
            image=image,
            usage_interval=usage_interval,
            controlplane_env=controlplane_env or {},
            node_env=node_env or {},
            tls=tls,
        )
        if node_name:
            cluster.node_name = node_name
        if tls:
            cluster.make_ca()
        cluster.start_images()
        cluster.start_controlplane()
        cluster.start_gateway()
        cluster.start_node()
        try:
            cluster.wait_node_connected()
            cluster.wait_gateway()
        except Exception:
            cluster.shutdown(keep=True)
            raise
        return cluster

    def shutdown(self, keep: bool = False) -> None:
        """Delete its instances, stop its processes, remove leftovers and its folder."""
        try:
            with self.client() as client:
                client.channel_ready(5)
                for inst in client.list_instances():
                    client.delete(inst["uuid"])
        except Exception:
            pass
        # Every process it started: extra node agents first, the control plane near last.
        order = ("nodeagent", "gateway", "controlplane", "images")
        for name in [*(p for p in self.procs if p not in order), *order]:
            self.stop(name)
        for uuid in virsh("list", "--all", "--uuid").stdout.split():
            if (self.node_dir / "instances" / uuid).exists():
                virsh("destroy", uuid)
                virsh("undefine", uuid, "--nvram")
        if not keep and os.environ.get("MINICLOUD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(self.root, ignore_errors=True)
