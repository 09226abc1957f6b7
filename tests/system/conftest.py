"""System fixtures: a real control plane and node agent as processes, real libvirtd and QEMU.

The guest image comes from MINICLOUD_TEST_IMAGE (set by tools/test.sh) or is
built (and cached) by tools/build_guest_image.py. A local HTTP server serves
it as the distribution shorthands debian:11 and debian:12.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.api import Client, JsonDict

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BANNER = "minicloud-guest: boot complete"
pytestmark = pytest.mark.system


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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate until it holds, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The bootable guest image (built once and cached)."""
    env_image = os.environ.get("MINICLOUD_TEST_IMAGE")
    if env_image:
        return Path(env_image)
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_guest_image.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Cluster:
    """A control plane, a node agent and an image server, as real processes."""

    root: Path
    image: Path
    api: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    image_port: int = field(default_factory=free_port)
    node_name: str = field(default_factory=lambda: f"sys-{uuidlib.uuid4().hex[:6]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
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
            },
        )

    def start_node(self) -> None:
        self._start(
            "nodeagent",
            [str(BIN / "minicloud-nodeagent")],
            {
                "MINICLOUD_NODE_CONTROL_PLANE": self.api,
                "MINICLOUD_NODE_NAME": self.node_name,
                "MINICLOUD_NODE_DATA_DIR": str(self.node_dir),
                "MINICLOUD_NODE_IMAGE_URL_TEMPLATE": f"http://127.0.0.1:{self.image_port}/{{name}}-{{version}}.qcow2",
                "MINICLOUD_NODE_BACKOFF_BASE": "0.2",
                "MINICLOUD_NODE_BACKOFF_CAP": "1",
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
        return Client(self.api, timeout=120)

    def wait_node_connected(self, connections: int = 1) -> None:
        def connected() -> bool:
            log = (self.root / "nodeagent.log").read_text(errors="replace")
            return log.count("connected to control plane") >= connections

        wait_until(connected, 30, "the node agent to connect")

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


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A running cluster for one test module; domains it made are removed afterwards."""
    root = Path("/var/lib/minicloud/test") / uuidlib.uuid4().hex[:8]
    root.mkdir(parents=True)
    for folder in (root.parent.parent, root.parent, root):
        folder.chmod(0o755)
    c = Cluster(root=root, image=guest_image)
    c.start_images()
    c.start_controlplane()
    c.start_node()
    try:
        c.wait_node_connected()
        yield c
    finally:
        try:
            with c.client() as client:
                for inst in client.list_instances():
                    client.delete(inst["uuid"])
        except Exception:
            pass
        for name in ("nodeagent", "controlplane", "images"):
            c.stop(name)
        for line in virsh("list", "--all", "--uuid").stdout.split():
            if (c.node_dir / "instances" / line).exists():
                virsh("destroy", line)
                virsh("undefine", line, "--nvram")
        if os.environ.get("MINICLOUD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


def small_spec(name: str, **overrides: object) -> JsonDict:
    """A 1-vCPU, 256 MiB instance booting the test image as debian:11."""
    spec: JsonDict = {
        "name": name,
        "cpus": 1,
        "memory": 256,
        "disks": [{"size_gb": 2, "base": "debian:11"}],
        "side_channels": ["sf-agent"],
    }
    spec.update(overrides)
    return spec


def running(inst: JsonDict) -> bool:
    """Created and powered on."""
    return inst["state"] == "created" and inst["power_state"] == "on"


def settled(inst: JsonDict) -> bool:
    """Created or failed."""
    return inst["state"] in ("created", "error")
