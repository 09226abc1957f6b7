"""The libvirt adapter: the only module in the project that imports ``libvirt``.

``LibvirtHypervisor`` implements the ``Hypervisor`` port over one libvirt
connection (``qemu:///system`` by default). It manages only domains whose name
starts with ``mc-`` and whose metadata names its node and its cluster
(``claim``); anything else on the host is invisible to it, so two clusters
sharing one libvirtd, even with one node name, never touch each other's
domains. A domain made before domains named their cluster, with this node's
name, is ``legacy``: listed (flagged so) and served, but its control plane
leaves it alone unless it knows the instance, and it takes the cluster's name
at its next definition.

- Every blocking libvirt call runs in a worker thread (``asyncio.to_thread``)
  and every ``libvirtError`` leaves this module as a ``HypervisorError`` (or
  ``DomainNotFound``), raised ``from`` the original. Each is timed in
  ``minicloud_libvirt_call_duration_seconds`` by the name of the function run.
- Lifecycle events come from libvirt's default event loop implementation,
  which runs in one daemon thread per process (libvirt allows one event
  implementation per process, so this is process-wide on purpose). The
  callback turns each event into a ``DomainState`` and hands it to the asyncio
  loop with ``call_soon_threadsafe``.
- When the connection drops (libvirtd restarted), the next call opens a new
  one, registers for events again and emits the current state of every
  managed domain, since events may have been missed meanwhile.
- Console ports (serial TCP, VNC/SPICE) are chosen when a domain is first
  defined (``ports.pick_ports``: 30000-50000, not used by another of our
  domains, bindable now) and read back from the domain's XML afterwards, so
  they stay the same across power cycles and node-agent restarts.
- The VNC/SPICE password is new at every start through this driver: in the
  XML of a (re)defined domain, or put into a stopped domain's persistent
  ``<graphics>`` with ``updateDeviceFlags`` before a power on. It is read
  back from the XML with ``VIR_DOMAIN_XML_SECURE``, so a restarted node
  agent still knows it; libvirt leaves it out of any other XML.
- Screenshots come through a libvirt stream, as PNG from libvirt 9 with QEMU
  7.1 or later (passed through) or as PPM from older ones (converted); usage
  counters come from one ``getAllDomainStats`` call for all domains.
- Disk snapshots: an external disk-only snapshot (``snapshotCreateXML``
  with no metadata, atomic; every other disk ``snapshot='no'``) puts a new
  overlay on top of one disk; ``commit_disk`` commits it back with an active
  shallow ``blockCommit`` (into the overlay's own backing file only), waits
  for the job to be ready, pivots
  (``blockJobAbort`` with ``PIVOT``) and deletes the overlay; a pivot that
  fails abandons the job, so the domain keeps running on the overlay.
- A domain that crashed stays ``crashed`` (libvirt keeps the shut-off reason)
  until it is started again or powered ``off`` through this driver; the
  driver remembers the latter in memory because libvirt cannot clear the
  reason of a domain that is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import libvirt
import structlog

from common.nodewire.domain import DomainRequest, NicRequest
from common.nodewire.power import POWER_ACTIONS, PowerAction, PowerState, target_of
from nodeagent.hypervisor.console_ports import (
    ConsolePorts,
    NoFreePort,
    bindable,
    new_password,
    pick_ports,
)
from nodeagent.hypervisor.domain_xml import (
    DOMAIN_PREFIX,
    build_domain_xml,
    domain_name,
    graphics_with_new_password,
    interface_macs,
    interface_xml,
    parse_console_ports,
    parse_domain_identity,
)
from nodeagent.hypervisor.protocol import (
    DiskUsage,
    DomainNotFound,
    DomainState,
    DomainUsage,
    HypervisorError,
    NicUsage,
    PreparedDisk,
)
from nodeagent.metrics import NodeMetrics
from nodeagent.png import PNG_SIGNATURE, ImageError, ppm_to_png

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DOMAIN_TYPE_SETTINGS = ("auto", "kvm", "qemu")
MAX_SCREENSHOT = 64 * 1024 * 1024
# How long an active commit of a snapshot overlay may take, and pivots tried once it is ready.
COMMIT_TIMEOUT = 600.0
PIVOT_TRIES = 40
_USAGE_STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)

# libvirt error codes after which trying again may succeed: the daemon was
# unreachable or busy, or the domain changed state under us. (System errors,
# such as a refused connection or a file QEMU may not open, count as retryable
# only when the connection is down.)
_RETRYABLE_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_OPERATION_ABORTED,
        libvirt.VIR_ERR_RESOURCE_BUSY,
    }
)

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
# The persistent definition, with the display password (libvirt hides it otherwise).
_SECURE_CONFIG_XML = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE

# (event, detail) -> (power state, reason); detail None is the event's default.
_EVENT_STATES: dict[int, tuple[str, dict[int | None, str]]] = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: (
        PowerState.ON,
        {
            None: "started",
            libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
            libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated here",
            libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
            libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "restored from snapshot",
            libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "woken up",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: (
        PowerState.PAUSED,
        {
            None: "paused",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "paused",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: "paused for migration",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "paused on a disk I/O error",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: "paused by the watchdog",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_RESTORED: "restored paused",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT: "restored paused from snapshot",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: "paused after a libvirt error",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: (
        PowerState.ON,
        {
            None: "resumed",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED: "unpaused",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED: "resumed after migration",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT: "resumed from snapshot",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: (
        PowerState.OFF,
        {
            None: "stopped",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown by guest",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated away",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "stopped for snapshot restore",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: (
        PowerState.PAUSED,
        {
            None: "suspended by guest",
            libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY: "suspended by guest to memory",
            libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED_DISK: "suspended by guest to disk",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: (
        PowerState.CRASHED,
        {
            None: "guest crashed",
            libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED: "guest panicked",
        },
    ),
}
# Stopped events that mean the domain died rather than was stopped.
_EVENT_CRASHES = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "guest crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "QEMU process died",
}

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown by guest",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated away",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed to start",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "stopped for snapshot restore",
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "stopped while libvirtd was down",
}
_PAUSED_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_USER: "paused",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "paused for migration",
    libvirt.VIR_DOMAIN_PAUSED_SAVE: "paused for save",
    libvirt.VIR_DOMAIN_PAUSED_DUMP: "paused for dump",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "paused on a disk I/O error",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "paused by the watchdog",
    libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN: "shutting down",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting up",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "guest crashed",
}
_RUNNING_REASONS = {
    libvirt.VIR_DOMAIN_RUNNING_BOOTED: "booted",
    libvirt.VIR_DOMAIN_RUNNING_MIGRATED: "migrated here",
    libvirt.VIR_DOMAIN_RUNNING_RESTORED: "restored",
    libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT: "restored from snapshot",
    libvirt.VIR_DOMAIN_RUNNING_UNPAUSED: "unpaused",
    libvirt.VIR_DOMAIN_RUNNING_WAKEUP: "woken up",
    libvirt.VIR_DOMAIN_RUNNING_CRASHED: "running after a crash",
}


def probe_domain_type(
    setting: str,
    *,
    kvm_device: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> str:
    """Pick the libvirt domain type: ``kvm`` when usable (or forced), else ``qemu`` (TCG).

    ``auto`` chooses KVM only when ``/dev/kvm`` is accessible and the CPU
    advertises hardware virtualisation (``vmx`` or ``svm``); a nested
    ``/dev/kvm`` without those flags stalls guests, so it counts as unusable.
    """
    if setting not in DOMAIN_TYPE_SETTINGS:
        raise HypervisorError(
            f"domain type setting must be one of {', '.join(DOMAIN_TYPE_SETTINGS)}, not {setting!r}"
        )
    if setting != "auto":
        return setting
    if not kvm_device.exists() or not os.access(kvm_device, os.R_OK | os.W_OK):
        return "qemu"
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "qemu"
    has_flags = re.search(r"^flags\s*:.*\b(vmx|svm)\b", text, re.MULTILINE) is not None
    return "kvm" if has_flags else "qemu"


def event_to_state(event: int, detail: int) -> tuple[str, str] | None:
    """Map a libvirt lifecycle event to (power state, reason); None if not a change."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail in _EVENT_CRASHES:
        return PowerState.CRASHED, _EVENT_CRASHES[detail]
    entry = _EVENT_STATES.get(event)
    if entry is None:
        # DEFINED, UNDEFINED and SHUTDOWN (the guest began shutting down; a
        # STOPPED or, for a reboot, RESUMED event follows) change no power state.
        return None
    power_state, reasons = entry
    return power_state, reasons.get(detail, reasons[None])


def libvirt_state_to_power(state: int, reason: int) -> tuple[str, str]:
    """Map ``virDomain.state()`` to (power state, reason), as Shaken Fist does."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        words = _SHUTOFF_REASONS.get(reason, "shut off")
        crashed = reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
        return (PowerState.CRASHED if crashed else PowerState.OFF), words
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return PowerState.CRASHED, "guest crashed"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return PowerState.PAUSED, _PAUSED_REASONS.get(reason, "paused")
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return PowerState.PAUSED, "suspended by guest"
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return PowerState.ON, "shutting down"
    # RUNNING, BLOCKED and NOSTATE are all a running guest.
    return PowerState.ON, _RUNNING_REASONS.get(reason, "running")


_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def _ignore_libvirt_error(context: Any, error: Any) -> None:
    """libvirt's error callback: errors are handled where the exception is raised."""


def _ensure_event_loop() -> None:
    """Start libvirt's default event loop in a daemon thread, once per process."""
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        # libvirt prints every error to stderr unless a handler takes them; ours
        # arrive as exceptions and are translated, so drop the printout.
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:
                    log.error("libvirt event loop failed")
                    threading.Event().wait(1.0)

        _event_loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_loop_thread.start()


class LibvirtHypervisor:
    """Domains run by libvirtd, one per instance, named ``mc-<uuid>``.

    ``sockets_dir/<uuid>`` (the instance's folder; the node agent shares it
    with the disks and console log) receives the channel sockets and the UEFI
    variable store; keep ``sockets_dir`` short, since unix socket paths are
    limited to 107 characters. ``domain_type`` is ``kvm``, ``qemu`` or
    ``auto`` (see ``probe_domain_type``); VNC and SPICE listen on
    ``vdi_listen``.
    """

    kind = "libvirt"

    def __init__(
        self,
        *,
        sockets_dir: Path,
        uri: str = "qemu:///system",
        domain_type: str = "auto",
        vdi_listen: str = "127.0.0.1",
        node_name: str = "",
        vdi_tls: bool = False,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.uri = uri
        self.vdi_tls = vdi_tls
        self._ports: dict[str, ConsolePorts] = {}
        self._ports_lock = threading.Lock()
        # Only domains whose metadata names this node are ours ("" = every mc- domain),
        # and this cluster (set by claim once the control plane said which it is).
        self.node_name = node_name
        self.cluster_id = ""
        # uuid -> "own", "legacy" (no cluster recorded) or "foreign".
        self._owners: dict[str, str] = {}
        self.sockets_dir = sockets_dir
        self.domain_type = probe_domain_type(domain_type)
        self.vdi_listen = vdi_listen
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_id: int | None = None
        self._connected_before = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[DomainState | None] = asyncio.Queue()
        # Crashed domains powered off through us: report them as off.
        self._off_acknowledged: set[str] = set()

    # -- the Hypervisor port -------------------------------------------------

    async def list_domains(self) -> list[DomainState]:
        """Every ``mc-`` domain on the host, running or not."""
        return await self._run("list domains", self._list_sync)

    async def get_domain(self, uuid: str) -> DomainState | None:
        """One domain's state, or None when it does not exist."""
        return await self._run(f"look up instance {uuid}", self._get_sync, uuid)

    async def define_and_start(
        self,
        spec: DomainRequest,
        disks: list[PreparedDisk],
        console_log: Path,
        *,
        start: bool = True,
    ) -> DomainState:
        """Define the domain (or refresh a stopped one's definition) and make it run (if start)."""
        return await self._run(
            f"{'start' if start else 'define'} instance {spec.uuid}",
            self._define_and_start_sync,
            spec,
            disks,
            console_log,
            start,
        )

    async def power(self, uuid: str, action: str) -> DomainState:
        """Perform one of POWER_ACTIONS, refusing what the current state does not allow."""
        if action not in POWER_ACTIONS:
            raise HypervisorError(f"unknown power action {action!r}", retryable=False)
        return await self._run(f"{action} instance {uuid}", self._power_sync, uuid, action)

    async def remove(self, uuid: str) -> None:
        """Destroy and undefine the domain (with its NVRAM); a missing domain is a no-op."""
        await self._run(f"remove instance {uuid}", self._remove_sync, uuid)

    async def attach_interface(self, uuid: str, nic: NicRequest) -> None:
        """Hot plug a NIC: live (if running) and into the persistent definition."""
        xml = interface_xml(nic)
        await self._run(
            f"attach an interface to instance {uuid}", self._attach_sync, uuid, nic, xml
        )

    async def disk_chain(self, uuid: str, device: str) -> list[Path]:
        """The files behind one disk of the live domain, the active one first."""
        return await self._run(f"read the disks of {uuid}", self._chain_sync, uuid, device)

    async def snapshot_disk(self, uuid: str, device: str, overlay: Path) -> None:
        """An external disk-only snapshot of one disk: the domain then writes to ``overlay``."""
        await self._run(
            f"snapshot disk {device} of {uuid}", self._snapshot_sync, uuid, device, overlay
        )

    async def commit_disk(self, uuid: str, device: str, overlay: Path) -> None:
        """Commit ``overlay`` back into its backing file, pivot onto it, delete the overlay."""
        await self._run(f"commit disk {device} of {uuid}", self._commit_sync, uuid, device, overlay)

    async def console_endpoint(self, uuid: str) -> tuple[str, int]:
        """Where the domain's serial console listens (its TCP chardev)."""
        ports = await self._run(f"look up the console of {uuid}", self._ports_sync, uuid)
        if not ports.console_port:
            raise HypervisorError(f"instance {uuid} has no TCP serial console")
        return self.vdi_listen, ports.console_port

    async def screenshot(self, uuid: str) -> bytes:
        """A PNG of the display of a running (or paused) domain."""
        image = await self._run(f"take a screenshot of {uuid}", self._screenshot_sync, uuid)
        if image.startswith(PNG_SIGNATURE):
            return image  # libvirt 9+ with QEMU 7.1+ hands over PNG already
        try:
            return await asyncio.to_thread(ppm_to_png, image)
        except ImageError as exc:
            raise HypervisorError(f"the screenshot of {uuid} is unreadable: {exc}") from exc

    async def versions(self) -> dict[str, str]:
        """The host's QEMU (hypervisor) and libvirt versions, as libvirt reports them."""
        return await self._run("read versions", self._versions_sync)

    async def usage(self) -> dict[str, DomainUsage]:
        """CPU, disk and interface counters of every running managed domain."""
        return await self._run("read usage statistics", self._usage_sync)

    async def events(self) -> AsyncIterator[DomainState]:
        """Power-state changes of managed domains as libvirt reports them, until close()."""
        if not self._closed:
            await self._run("subscribe to domain events", self._connection)
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        """Deregister from events, close the connection and end events()."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_sync)
        self._events.put_nowait(None)

    # -- helpers run in worker threads --------------------------------------

    def _versions_sync(self) -> dict[str, str]:
        conn = self._connection()
        return {"qemu": _version(conn.getVersion()), "libvirt": _version(conn.getLibVersion())}

    async def _run(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking libvirt call in a thread, translating its errors."""
        if self._closed:
            raise HypervisorError(f"cannot {what}: the libvirt driver is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        call = fn.__name__.strip("_").removesuffix("_sync")
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except libvirt.libvirtError as exc:
            self._failed(call)
            raise self._translate(exc, what) from exc
        except OSError as exc:  # the instance folder could not be made
            self._failed(call)
            raise HypervisorError(f"cannot {what}: {exc}") from exc
        finally:
            if self.metrics is not None:
                elapsed = time.perf_counter() - started
                self.metrics.libvirt_calls.observe(elapsed, call=call)

    def _failed(self, call: str) -> None:
        if self.metrics is not None:
            self.metrics.libvirt_errors.inc(call=call)

    def _translate(self, exc: Any, what: str) -> HypervisorError:
        code = exc.get_error_code()
        message = f"cannot {what}: {exc.get_error_message() or exc}"
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainNotFound(message)
        retryable = code in _RETRYABLE_ERRORS or not self._alive()
        log.warning("libvirt error", operation=what, code=code, retryable=retryable, error=str(exc))
        return HypervisorError(message, retryable=retryable)

    def _alive(self) -> bool:
        conn = self._conn
        try:
            return conn is not None and conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def _connection(self) -> Any:
        """The open connection, (re)connecting and subscribing to events as needed."""
        with self._lock:
            if self._closed:
                raise HypervisorError("the libvirt driver is closed")
            if self._conn is not None and self._alive():
                return self._conn
            if self._conn is not None:
                log.warning("libvirt connection lost", uri=self.uri)
                self._drop_connection()
            _ensure_event_loop()
            conn = libvirt.open(self.uri)
            try:
                conn.registerCloseCallback(self._on_close, None)
                self._callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                )
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                conn.close()
                raise
            self._conn = conn
            reconnected, self._connected_before = self._connected_before, True
            log.info("libvirt connected", uri=self.uri, reconnected=reconnected)
        if reconnected:
            # Events may have been missed while disconnected: report what is there now.
            for state in self._list_sync():
                self._emit(state)
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        callback_id, self._callback_id = self._callback_id, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if callback_id is not None:
                conn.domainEventDeregisterAny(callback_id)
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _close_sync(self) -> None:
        with self._lock:
            self._drop_connection()

    def _lookup(self, uuid: str) -> Any:
        """The managed domain for ``uuid``; DomainNotFound if there is none."""
        try:
            dom = self._connection().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise DomainNotFound(f"no domain for instance {uuid}") from exc
            raise
        if not self._owned(dom):
            raise DomainNotFound(f"the domain with uuid {uuid} is not managed by this node")
        return dom

    def claim(self, cluster_id: str) -> None:
        """Serve the cluster cluster_id: its domains (and legacy ones) are ours from now."""
        with self._lock:
            if cluster_id != self.cluster_id:
                self.cluster_id = cluster_id
                self._owners.clear()

    def _ownership(self, dom: Any) -> str:
        """own, legacy or foreign: an mc- name, our node and our cluster in its metadata."""
        if not str(dom.name()).startswith(DOMAIN_PREFIX):
            return "foreign"
        if not self.node_name:
            return "own"
        uuid = str(dom.UUIDString())
        found = self._owners.get(uuid)
        if found is None:
            identity = parse_domain_identity(dom.XMLDesc(0))
            if identity.node != self.node_name:
                found = "foreign"
            elif not identity.cluster:
                found = "legacy"
            else:
                found = "own" if identity.cluster == self.cluster_id else "foreign"
            self._owners[uuid] = found
        return found

    def _owned(self, dom: Any) -> bool:
        """Whether a domain is one of ours (its own or a legacy one of this node)."""
        return self._ownership(dom) != "foreign"

    def _state_of(self, uuid: str, dom: Any) -> DomainState:
        state, reason = dom.state()
        power_state, words = libvirt_state_to_power(int(state), int(reason))
        acknowledged = uuid in self._off_acknowledged
        if power_state == PowerState.CRASHED and not dom.isActive() and acknowledged:
            power_state, words = PowerState.OFF, "powered off after a crash"
        legacy = self._ownership(dom) == "legacy"
        return DomainState(uuid, power_state, words, self._ports_of(uuid, dom), legacy=legacy)

    def _ports_of(self, uuid: str, dom: Any) -> ConsolePorts:
        """A domain's console ports and password, read from its XML once and then remembered."""
        ports = self._ports.get(uuid)
        if ports is None:
            ports = parse_console_ports(str(dom.XMLDesc(_SECURE_CONFIG_XML)))
            self._ports[uuid] = ports
        return ports

    def _ports_sync(self, uuid: str) -> ConsolePorts:
        return self._ports_of(uuid, self._lookup(uuid))

    def _choose_ports(self, spec: DomainRequest) -> ConsolePorts:
        """The domain's existing ports, or new ones no other domain of ours uses."""
        try:
            existing = self._ports_of(spec.uuid, self._lookup(spec.uuid))
        except DomainNotFound:
            existing = ConsolePorts()
        tls = self.vdi_tls and spec.video.vdi != "vnc"
        if existing.console_port and existing.vdi_port and (existing.vdi_tls_port or not tls):
            return existing
        taken: list[int] = []
        for dom in self._connection().listAllDomains(0):
            try:
                if self._owned(dom) and str(dom.UUIDString()) != spec.uuid:
                    taken += self._ports_of(str(dom.UUIDString()), dom).ports()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        try:
            picked = pick_ports(3 if tls else 2, taken, bindable(self.vdi_listen))
        except NoFreePort as exc:
            raise HypervisorError(f"cannot start instance {spec.uuid}: {exc}") from exc
        return ConsolePorts(picked[0], picked[1], picked[2] if tls else 0)

    def _screenshot_sync(self, uuid: str) -> bytes:
        dom = self._lookup(uuid)
        if not dom.isActive():
            raise HypervisorError(
                f"cannot take a screenshot of instance {uuid}: it is not running", retryable=False
            )
        stream = self._connection().newStream(0)
        try:
            dom.screenshot(stream, 0, 0)
            data = bytearray()
            while chunk := stream.recv(256 * 1024):
                if isinstance(chunk, int):  # -2: would block (only for non-blocking streams)
                    continue
                data += chunk
                if len(data) > MAX_SCREENSHOT:
                    raise HypervisorError(f"the screenshot of {uuid} is too large")
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return bytes(data)

    def _usage_sync(self) -> dict[str, DomainUsage]:
        conn = self._connection()
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        result = {}
        for dom, stats in conn.getAllDomainStats(_USAGE_STATS, flags):
            try:
                if not self._owned(dom):
                    continue
                macs = _interface_macs(str(dom.XMLDesc(0)))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # it went away meanwhile
                raise
            result[str(dom.UUIDString())] = usage_from_stats(stats, macs)
        return result

    def _list_sync(self) -> list[DomainState]:
        states = []
        for dom in self._connection().listAllDomains(0):
            if not self._owned(dom):
                continue
            uuid = str(dom.UUIDString())
            try:
                states.append(self._state_of(uuid, dom))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return states

    def _get_sync(self, uuid: str) -> DomainState | None:
        try:
            return self._state_of(uuid, self._lookup(uuid))
        except DomainNotFound:
            return None

    def _define_and_start_sync(
        self, spec: DomainRequest, disks: list[PreparedDisk], console_log: Path, start: bool
    ) -> DomainState:
        uuid = spec.uuid
        instance_dir = self.sockets_dir / uuid
        conn = self._connection()
        try:
            dom = self._lookup(uuid)
        except DomainNotFound:
            dom = None
            self._refuse_running_foreign(uuid)
        if dom is not None and dom.isActive():
            current = self._state_of(uuid, dom)
            if not start and current.power_state in (PowerState.ON, PowerState.PAUSED):
                return current
            if current.power_state == PowerState.ON:
                log.info("domain already running", uuid=uuid)
                return current
            if current.power_state == PowerState.PAUSED:
                self._unpause(dom)
                return self._state_of(uuid, dom)
            dom.destroy()  # an active but crashed domain
        with self._ports_lock:  # two creates at once must not choose the same ports
            ports = self._choose_ports(spec)
            if start or not ports.vdi_password:
                ports = dataclasses.replace(ports, vdi_password=new_password(spec.video.vdi))
            xml = build_domain_xml(
                spec,
                disks,
                console_log=console_log,
                domain_type=self.domain_type,
                socket_dir=instance_dir,
                listen_address=self.vdi_listen,
                node_name=self.node_name,
                ports=ports,
                cluster_id=self.cluster_id,
            )
            self._ports[uuid] = ports
        # QEMU runs as an unprivileged user: it must be able to enter the folders.
        instance_dir.mkdir(parents=True, exist_ok=True)
        instance_dir.chmod(0o755)
        console_log.parent.mkdir(parents=True, exist_ok=True)
        dom = conn.defineXML(xml)  # defines, or refreshes a stopped domain's definition
        self._owners[uuid] = "own" if self.cluster_id or not self.node_name else "legacy"
        if not start:
            log.info("domain defined", uuid=uuid, domain=domain_name(uuid), type=self.domain_type)
            return self._state_of(uuid, dom)
        self._off_acknowledged.discard(uuid)
        dom.create()
        log.info("domain started", uuid=uuid, domain=domain_name(uuid), type=self.domain_type)
        return self._state_of(uuid, dom)

    def _power_sync(self, uuid: str, action: str) -> DomainState:
        dom = self._lookup(uuid)
        current = self._state_of(uuid, dom)
        if target_of(action, current.power_state) is None:
            raise HypervisorError(
                f"cannot {action} instance {uuid}: it is {current.power_state}", retryable=False
            )
        if action == PowerAction.ON:
            if dom.isActive():
                dom.destroy()  # a crashed domain that libvirt kept around
            self._renew_password(uuid, dom)
            self._off_acknowledged.discard(uuid)
            dom.create()
        elif action == PowerAction.OFF:
            if dom.isActive():
                dom.destroy()
            else:
                self._off_acknowledged.add(uuid)
        elif action == PowerAction.PAUSE:
            dom.suspend()
        elif action == PowerAction.UNPAUSE:
            self._unpause(dom)
        elif action == PowerAction.SOFT_REBOOT:
            dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
            log.info("domain power action", uuid=uuid, action=action)
            return DomainState(uuid, PowerState.ON, action, current.ports)
        elif action == PowerAction.HARD_REBOOT:
            if dom.isActive():
                dom.destroy()
            self._off_acknowledged.discard(uuid)
            dom.create()
        after = self._state_of(uuid, dom)
        log.info("domain power action", uuid=uuid, action=action, power_state=after.power_state)
        return DomainState(uuid, after.power_state, action, after.ports)

    def _renew_password(self, uuid: str, dom: Any) -> None:
        """Give a stopped domain's display a new password, for the start that follows."""
        found = graphics_with_new_password(str(dom.XMLDesc(_SECURE_CONFIG_XML)))
        if found is None:
            return
        element, password = found
        dom.updateDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        self._ports[uuid] = dataclasses.replace(self._ports_of(uuid, dom), vdi_password=password)
        log.info("display password renewed", uuid=uuid)

    def _unpause(self, dom: Any) -> None:
        state, _ = dom.state()
        if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            dom.pMWakeup(0)
        else:
            dom.resume()

    def _attach_sync(self, uuid: str, nic: NicRequest, xml: str) -> None:
        dom = self._lookup(uuid)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            if nic.mac.lower() in interface_macs(dom.XMLDesc(0)):
                return
        elif nic.mac.lower() in interface_macs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
            return
        dom.attachDeviceFlags(xml, flags)
        log.info("interface attached", uuid=uuid, mac=nic.mac, bridge=nic.bridge)

    def _chain_sync(self, uuid: str, device: str) -> list[Path]:
        return disk_chain_of(self._lookup(uuid).XMLDesc(0), device)

    def _snapshot_sync(self, uuid: str, device: str, overlay: Path) -> None:
        dom = self._lookup(uuid)
        xml = dom.XMLDesc(0)
        disk_chain_of(xml, device)  # HypervisorError when there is no such disk
        root = ET.Element("domainsnapshot")
        disks = ET.SubElement(root, "disks")
        for target in ET.fromstring(xml).iterfind("./devices/disk/target"):
            name = target.get("dev", "")
            if name == device:
                element = ET.SubElement(disks, "disk", name=name, snapshot="external")
                ET.SubElement(element, "driver", type="qcow2")
                ET.SubElement(element, "source", file=str(overlay))
            else:
                ET.SubElement(disks, "disk", name=name, snapshot="no")
        flags = (
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        )
        dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), flags)
        log.info("disk snapshot taken", uuid=uuid, device=device, overlay=str(overlay))

    def _commit_sync(self, uuid: str, device: str, overlay: Path) -> None:
        dom = self._lookup(uuid)
        chain = disk_chain_of(dom.XMLDesc(0), device)
        if len(chain) < 2 or chain[0] != overlay:
            raise HypervisorError(f"disk {device} of {uuid} does not run on {overlay}")
        # SHALLOW: into the overlay's own backing file, never further down the chain
        # (without it a NULL base means the deepest file: the shared base image).
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
        dom.blockCommit(device, None, None, 0, flags)
        try:
            self._pivot(dom, device)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                dom.blockJobAbort(device, 0)  # the domain stays on the overlay, as before
            raise
        after = disk_chain_of(dom.XMLDesc(0), device)
        if after != chain[1:]:
            raise HypervisorError(f"disk {device} of {uuid} runs on {after[0]}, not {chain[1]}")
        with contextlib.suppress(FileNotFoundError):
            overlay.unlink()
        log.info("disk snapshot committed", uuid=uuid, device=device, overlay=str(overlay))

    def _pivot(self, dom: Any, device: str) -> None:
        """Wait for the active commit to be ready (everything copied), then pivot."""
        deadline = time.monotonic() + COMMIT_TIMEOUT
        tries = 0
        while True:
            info = dom.blockJobInfo(device, 0)
            if not info:
                raise HypervisorError(f"the commit job of disk {device} vanished")
            if info.get("end", 0) > 0 and info.get("cur") == info.get("end"):
                try:
                    dom.blockJobAbort(device, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return
                except libvirt.libvirtError as exc:
                    tries += 1
                    if tries >= PIVOT_TRIES:
                        raise
                    # not ready yet: QEMU reports ready a moment after cur reaches end
                    log.debug("pivot not possible yet", device=device, error=str(exc))
            if time.monotonic() > deadline:
                raise HypervisorError(f"committing disk {device} took over {COMMIT_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def _refuse_running_foreign(self, uuid: str) -> None:
        """HypervisorError when another node's domain with this UUID runs on this libvirtd.

        A stopped one is taken over by defining ours (an instance moved here from a
        node agent sharing this host); a running one must be stopped first.
        """
        try:
            other = self._connection().lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return
        if other.isActive():
            raise HypervisorError(
                f"a domain with uuid {uuid} runs here for another node; stop it first",
                retryable=False,
            )

    def _remove_sync(self, uuid: str) -> None:
        # Ownership read afresh: a node agent sharing this libvirtd may have taken the
        # domain over (an instance moved between two nodes on one host); never remove its.
        self._owners.pop(uuid, None)
        try:
            dom = self._lookup(uuid)
        except DomainNotFound:
            dom = None
        if dom is not None:
            try:
                sockets = self._owned_sockets(uuid, str(dom.XMLDesc(0)))
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(_UNDEFINE_FLAGS)  # also deletes the NVRAM file
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            else:
                for path in sockets:
                    path.unlink(missing_ok=True)
            log.info("domain removed", uuid=uuid)
        self._off_acknowledged.discard(uuid)
        self._ports.pop(uuid, None)

    def _owned_sockets(self, uuid: str, xml: str) -> list[Path]:
        """Channel sockets of the domain that live in its folder (ours to delete)."""
        folder = self.sockets_dir / uuid
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            return []
        paths = (Path(s.get("path", "")) for s in root.iterfind("devices/channel/source"))
        return [path for path in paths if path.parent == folder]

    # -- callbacks from libvirt's event thread -------------------------------

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        try:
            if not self._owned(dom):
                return
            mapped = event_to_state(event, detail)
            uuid = str(dom.UUIDString())
            log.debug("libvirt event", uuid=uuid, libvirt_event=event, detail=detail, mapped=mapped)
            if mapped is None:
                return
            if mapped[0] == PowerState.ON:
                self._off_acknowledged.discard(uuid)
            self._emit(DomainState(uuid=uuid, power_state=mapped[0], reason=mapped[1]))
        except Exception:  # never let an exception escape into libvirt's C loop
            log.exception("libvirt event callback failed")

    def _on_close(self, conn: Any, reason: int, opaque: Any) -> None:
        log.warning("libvirt connection closed", uri=self.uri, reason=reason)

    def _emit(self, state: DomainState) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        # RuntimeError: the loop has closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._events.put_nowait, state)


def disk_chain_of(xml: str, device: str) -> list[Path]:
    """The files of the domain disk with that target device, active first (from live XML)."""
    for disk in ET.fromstring(xml).iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") != device:
            continue
        chain = []
        node: ET.Element | None = disk
        while node is not None:
            source = node.find("source")
            if source is None or not source.get("file"):
                break
            chain.append(Path(source.get("file", "")))
            node = node.find("backingStore")
        if not chain:
            raise HypervisorError(f"disk {device} has no file")
        return chain
    raise HypervisorError(f"the domain has no disk {device}")


def _interface_macs(xml: str) -> dict[str, str]:
    """Host-side interface name -> guest MAC address, from domain XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    macs = {}
    for interface in root.iterfind("devices/interface"):
        target, mac = interface.find("target"), interface.find("mac")
        if target is not None and mac is not None:
            macs[target.get("dev", "")] = mac.get("address", "")
    return macs


def _disk_bytes(path: str) -> int:
    """Bytes a disk file really occupies on the host (its allocated blocks)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def usage_from_stats(stats: dict[str, Any], macs: dict[str, str]) -> DomainUsage:
    """DomainUsage from one domain's ``getAllDomainStats`` record."""

    def number(key: str, default: int = 0) -> int:
        return int(stats.get(key, default))

    disks = {}
    for i in range(number("block.count")):
        name = str(stats.get(f"block.{i}.name", ""))
        if not name or name in disks:
            continue  # a backing file of a disk already counted
        disks[name] = DiskUsage(
            actual_bytes=_disk_bytes(str(stats.get(f"block.{i}.path", ""))),
            read_bytes=number(f"block.{i}.rd.bytes"),
            read_requests=number(f"block.{i}.rd.reqs"),
            write_bytes=number(f"block.{i}.wr.bytes"),
            write_requests=number(f"block.{i}.wr.reqs"),
            errors=number(f"block.{i}.errors", -1),
        )
    nics = {}
    for i in range(number("net.count")):
        name = str(stats.get(f"net.{i}.name", ""))
        mac = macs.get(name, name)
        # The host's rx is what the guest sent: Shaken Fist reports the host side's view.
        nics[mac] = NicUsage(
            read_bytes=number(f"net.{i}.rx.bytes"),
            read_packets=number(f"net.{i}.rx.pkts"),
            read_errors=number(f"net.{i}.rx.errs"),
            read_drops=number(f"net.{i}.rx.drop"),
            write_bytes=number(f"net.{i}.tx.bytes"),
            write_packets=number(f"net.{i}.tx.pkts"),
            write_errors=number(f"net.{i}.tx.errs"),
            write_drops=number(f"net.{i}.tx.drop"),
        )
    return DomainUsage(
        cpu_time_ns=number("cpu.time"),
        user_time_ns=number("cpu.user"),
        system_time_ns=number("cpu.system"),
        disks=disks,
        nics=nics,
    )


def _version(number: int) -> str:
    """libvirt's packed version number (major * 1e6 + minor * 1e3 + release) as text."""
    if number <= 0:
        return ""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
