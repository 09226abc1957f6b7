"""Shared fixtures for the contract suites: each port against its fake and its real adapter.

The real hypervisor half boots QEMU guests through the running libvirtd
(``qemu:///system``) and is marked ``system``. Guests boot from a blank qcow2
disk (they sit in the BIOS, which is enough for power-state behaviour) or from
an overlay on ``MINICLOUD_TEST_IMAGE`` when that names a bootable image.
Everything lives in a folder under /var/tmp that QEMU's unprivileged user can
enter, and every ``mc-`` domain a test makes is destroyed and undefined after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.nodewire.domain import DomainRequest
from nodeagent.hypervisor.domain_xml import interface_macs
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import DomainState, Hypervisor, PreparedDisk

LIBVIRT_URI = "qemu:///system"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    """Run virsh against the system libvirtd, behind the driver's back."""
    return subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, check=False
    )


def qemu_img(*args: str) -> str:
    """Run qemu-img and return its output."""
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scratch folder QEMU (running as libvirt-qemu) can enter; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mc-contract-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Backend:
    """One hypervisor under test, with the means to act behind its back."""

    kind: str
    hypervisor: Hypervisor
    root: Path
    image: Path | None = None
    created: list[str] = field(default_factory=list)
    external_destroy: Callable[[str], None] = lambda uuid: None
    external_crash: Callable[[str], None] = lambda uuid: None
    # The MAC addresses of a domain's NICs: (live, persistent definition).
    macs: Callable[[str], tuple[list[str], list[str]]] = lambda uuid: ([], [])

    def new_spec(self, **overrides: object) -> DomainRequest:
        """A small spec with a fresh UUID, remembered for clean-up."""
        uuid = str(uuidlib.uuid4())
        self.created.append(uuid)
        fields: dict[str, object] = {"uuid": uuid, "name": f"contract-{uuid[:8]}", "memory_mb": 256}
        fields.update(overrides)
        return DomainRequest(**fields)  # type: ignore[arg-type]

    def disks_for(self, spec: DomainRequest) -> list[PreparedDisk]:
        """A boot disk for the spec: a real qcow2 file for libvirt, a notional one for the fake."""
        folder = self.root / "instances" / spec.uuid
        path = folder / "disk0.qcow2"
        if self.kind == "fake":
            return [PreparedDisk(path=path)]
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        if path.exists():
            pass  # made for an earlier define_and_start of the same domain
        elif self.image is not None:
            fmt = json.loads(qemu_img("info", "--output=json", str(self.image)))["format"]
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(self.image), "-F", fmt, str(path))
        else:
            qemu_img("create", "-q", "-f", "qcow2", str(path), "1G")
        return [PreparedDisk(path=path)]

    def console_log(self, spec: DomainRequest) -> Path:
        """Where the spec's serial console is logged."""
        return self.root / "instances" / spec.uuid / "console.log"

    async def boot(self, **overrides: object) -> tuple[DomainRequest, DomainState]:
        """Define and start a fresh domain; return its spec and the state it reached."""
        spec = self.new_spec(**overrides)
        self.console_log(spec).parent.mkdir(parents=True, exist_ok=True)
        state = await self.hypervisor.define_and_start(
            spec, self.disks_for(spec), self.console_log(spec)
        )
        return spec, state


def _libvirt_available() -> str | None:
    """Why the libvirt half cannot run here, or None when it can."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed"
    if shutil.which("virsh") is None or shutil.which("qemu-img") is None:
        return "virsh or qemu-img is missing"
    if virsh("version").returncode != 0:
        return f"libvirtd is not reachable at {LIBVIRT_URI}"
    return None


def _kill_qemu(uuid: str) -> None:
    """Kill a domain's QEMU process outright, as a crash would."""
    pid = Path(f"/run/libvirt/qemu/mc-{uuid}.pid").read_text().strip()
    os.kill(int(pid), 9)


def _cleanup_domains(uuids: list[str]) -> None:
    """Destroy and undefine every domain a test made, whatever state it is in."""
    for uuid in uuids:
        name = f"mc-{uuid}"
        if virsh("domuuid", name).returncode != 0:
            continue
        virsh("destroy", name)
        virsh("undefine", "--nvram", name)


@pytest.fixture(scope="session")
def boot_image() -> Iterator[Path | None]:
    """MINICLOUD_TEST_IMAGE copied where QEMU's user can read it (it may live under /root)."""
    image = os.environ.get("MINICLOUD_TEST_IMAGE")
    if not image:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="mc-contract-image-", dir="/var/tmp"))
    folder.chmod(0o755)
    copy = folder / Path(image).name
    shutil.copyfile(image, copy)
    copy.chmod(0o644)
    yield copy
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.system)])
async def backend(request: pytest.FixtureRequest, work_dir: Path) -> AsyncIterator[Backend]:
    """The hypervisor under test: the in-memory fake, then the libvirt driver."""
    if request.param == "fake":
        fake = FakeHypervisor()
        yield Backend(
            kind="fake",
            hypervisor=fake,
            root=work_dir,
            external_destroy=lambda uuid: fake.external_power(uuid, "off", "destroyed"),
            external_crash=lambda uuid: fake.external_power(uuid, "crashed", "QEMU process died"),
            macs=lambda uuid: ([n.mac for n in fake.specs[uuid].interfaces],) * 2,
        )
        await fake.close()
        return

    reason = _libvirt_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"libvirt must be available in CI: {reason}")
        pytest.skip(reason)
    from nodeagent.hypervisor.libvirt_driver import LibvirtHypervisor
    from nodeagent.metrics import NodeMetrics

    driver = LibvirtHypervisor(
        sockets_dir=work_dir / "instances",
        uri=LIBVIRT_URI,
        domain_type=os.environ.get("MINICLOUD_TEST_DOMAIN_TYPE", "auto"),
        metrics=NodeMetrics(),
    )
    real = Backend(
        kind="libvirt",
        hypervisor=driver,
        root=work_dir,
        image=request.getfixturevalue("boot_image"),
        external_destroy=lambda uuid: _check(virsh("destroy", f"mc-{uuid}")),
        external_crash=_kill_qemu,
        macs=_libvirt_macs,
    )
    try:
        yield real
    finally:
        await driver.close()
        _cleanup_domains(real.created)


def _libvirt_macs(uuid: str) -> tuple[list[str], list[str]]:
    live = virsh("dumpxml", f"mc-{uuid}").stdout
    config = virsh("dumpxml", "--inactive", f"mc-{uuid}").stdout
    return interface_macs(live), interface_macs(config)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


# -- an HTTP server for the disk builder ---------------------------------------


@dataclass
class ImageServer:
    """A local HTTP server over a folder, counting the requests per path."""

    folder: Path
    port: int
    requests: dict[str, int]

    def url(self, name: str) -> str:
        """The URL of a file in the served folder."""
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def image_server(work_dir: Path) -> Iterator[ImageServer]:
    """Serve work_dir/served on 127.0.0.1 on a free port."""
    folder = work_dir / "served"
    folder.mkdir()
    requests: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                requests[self.path] = requests.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield ImageServer(folder=folder, port=server.server_address[1], requests=requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def make_image(work_dir: Path) -> Callable[..., Path]:
    """Make a small qcow2 image (optionally with data written into it)."""

    def make(name: str, size: str = "64M", folder: Path | None = None) -> Path:
        path = (folder or work_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        qemu_img("create", "-q", "-f", "qcow2", str(path), size)
        return path

    return make


async def next_event(
    events: AsyncIterator[DomainState], predicate: Callable[[DomainState], bool], timeout: float
) -> DomainState:
    """The first event matching predicate, or fail after timeout seconds."""

    async def find() -> DomainState:
        async for event in events:
            if predicate(event):
                return event
        raise AssertionError("the event stream ended")

    try:
        return await asyncio.wait_for(find(), timeout)
    except TimeoutError as exc:
        raise AssertionError(f"no matching event within {timeout}s") from exc
