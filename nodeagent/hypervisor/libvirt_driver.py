"""The libvirt adapter: the only module in the project that imports ``libvirt``.

``LibvirtHypervisor`` implements the ``Hypervisor`` port over one libvirt
connection (``qemu:///system`` by default). It manages only domains whose name
starts with ``mc-``; anything else on the host is invisible to it.

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
- Screenshots come through a libvirt stream, as PNG from libvirt 9 with QEMU
  7.1 or later (passed through) or as PPM from older ones (converted); usage
  counters come from one ``getAllDomainStats`` call for all domains.
- A domain that crashed stays ``crashed`` (libvirt keeps the shut-off reason)
  until it is started again or powered ``off`` through this driver; the
  driver remembers the latter in memory because libvirt cannot clear the
  reason of a domain that is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from nodeagent.hypervisor.console_ports import ConsolePorts, NoFreePort, bindable, pick_ports
from nodeagent.hypervisor.domain_xml import (
    DOMAIN_PREFIX,
    build_domain_xml,
    domain_name,
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
        # Only domains whose metadata names this node are ours ("" = every mc- domain).
        self.node_name = node_name
        self._owners: dict[str, bool] = {}
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

    def _owned(self, dom: Any) -> bool:
        """Whether a domain is one of ours: an mc- name, and our node in its metadata."""
        if not str(dom.name()).startswith(DOMAIN_PREFIX):
            return False
        if not self.node_name:
            return True
        uuid = str(dom.UUIDString())
        owned = self._owners.get(uuid)
        if owned is None:
            owned = parse_domain_identity(dom.XMLDesc(0)).node == self.node_name
            self._owners[uuid] = owned
        return owned

    def _state_of(self, uuid: str, dom: Any) -> DomainState:
        state, reason = dom.state()
        power_state, words = libvirt_state_to_power(int(state), int(reason))
        acknowledged = uuid in self._off_acknowledged
        if power_state == PowerState.CRASHED and not dom.isActive() and acknowledged:
            power_state, words = PowerState.OFF, "powered off after a crash"
        return DomainState(uuid, power_state, words, self._ports_of(uuid, dom))

    def _ports_of(self, uuid: str, dom: Any) -> ConsolePorts:
        """A domain's console ports, read from its XML once and then remembered."""
        ports = self._ports.get(uuid)
        if ports is None:
            ports = parse_console_ports(str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
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
            xml = build_domain_xml(
                spec,
                disks,
                console_log=console_log,
                domain_type=self.domain_type,
                socket_dir=instance_dir,
                listen_address=self.vdi_listen,
                node_name=self.node_name,
                ports=ports,
            )
            self._ports[uuid] = ports
        # QEMU runs as an unprivileged user: it must be able to enter the folders.
        instance_dir.mkdir(parents=True, exist_ok=True)
        instance_dir.chmod(0o755)
        console_log.parent.mkdir(parents=True, exist_ok=True)
        dom = conn.defineXML(xml)  # defines, or refreshes a stopped domain's definition
        self._owners[uuid] = True
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
