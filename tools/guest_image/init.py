#!/usr/bin/env -S PYTHONHASHSEED=0 /usr/bin/python3 -u
"""PID 1 of the minicloud guest image (installed as /usr/sbin/minicloud-init).

There is no systemd in the image. This process mounts the kernel file
systems, sets the host name, grows the root file system when the disk is
bigger than its partition, then supervises a few services and restarts them
when they exit:

* qemu-ga on the virtio port named ``org.qemu.guest_agent.0`` (found through
  ``/sys/class/virtio-ports/*/name``, as there is no udev), when present;
* the minicloud guest agent (``python3 -m guestagent.serve`` with
  ``PYTHONPATH=/usr/local/lib/minicloud``), when it is installed;
* a root shell on each console named on the kernel command line.

It prints ``minicloud-guest: booting`` when it starts and
``minicloud-guest: boot complete`` once the services are started. It powers
the machine off when the ACPI power button is pressed (``KEY_POWER`` on any
``/dev/input/event*``) or on SIGUSR1/SIGUSR2, and reboots on SIGTERM or
SIGINT (Ctrl-Alt-Del); ``/usr/sbin/{poweroff,reboot,halt,shutdown}`` send
those signals. Shutting down stops every process, syncs, remounts the root
file system read-only and calls reboot(2).

The interpreter runs with PYTHONHASHSEED=0 (see the first line): otherwise
its start waits about a second, under TCG, for the kernel's random number
generator to be seeded. The services start with a normal environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import traceback
from collections.abc import Callable
from pathlib import Path

PREFIX = "minicloud-guest:"
BANNER = "minicloud-guest: boot complete"  # tests wait for this line
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_HOME = Path("/usr/local/lib/minicloud")
AGENT_ENTRY = AGENT_HOME / "guestagent" / "serve.py"
QEMU_GA = Path("/usr/sbin/qemu-ga")
BUSYBOX = Path("/usr/local/bin/busybox")
DHCP_SCRIPT = Path("/usr/local/share/minicloud/udhcpc.sh")
QEMU_GA_PORT_NAME = "org.qemu.guest_agent.0"
LOG_DIR = Path("/var/log/minicloud")
DEFAULT_HOSTNAME = "minicloud-guest"

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
EV_KEY = 1
KEY_POWER = 116
INPUT_EVENT = struct.Struct("llHHi")
GROW_MIN_SECTORS = 8 * 2048  # grow only when at least 8 MiB are unused

LIBC = ctypes.CDLL(None, use_errno=True)


def console(line: str) -> None:
    """Print one line on the console."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def say(message: str) -> None:
    """Print one line on the console, prefixed so that logs can find it."""
    console(f"{PREFIX} {message}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """Mount a file system unless something is mounted there already."""
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(target):
        return
    result = LIBC.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode())
    if result != 0:
        say(f"mount {fstype} on {target} failed: {os.strerror(ctypes.get_errno())}")


def mount_kernel_filesystems() -> None:
    """Mount proc, sys, devtmpfs, devpts, /dev/shm, /run and /tmp."""
    secure = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("proc", "/proc", "proc", secure)
    mount("sysfs", "/sys", "sysfs", secure)
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        link = Path("/dev") / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    if LIBC.mount(b"", b"/", b"", MS_REMOUNT, b"") != 0:
        say(f"remounting / read-write failed: {os.strerror(ctypes.get_errno())}")
    Path("/run/lock").mkdir(mode=0o1777, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)


def kernel_arguments() -> list[str]:
    """Return the words of the kernel command line."""
    try:
        return Path("/proc/cmdline").read_text().split()
    except OSError:
        return []


def set_hostname() -> None:
    """Set the host name from minicloud.hostname=, /etc/hostname or a default."""
    name = ""
    for argument in kernel_arguments():
        if argument.startswith("minicloud.hostname="):
            name = argument.split("=", 1)[1]
    if not name:
        try:
            name = Path("/etc/hostname").read_text().strip()
        except OSError:
            name = ""
    try:
        socket.sethostname(name or DEFAULT_HOSTNAME)
    except OSError as exc:
        say(f"setting the host name failed: {exc}")


def run_quietly(argv: list[str], timeout: float = 60) -> bool:
    """Run a command to completion, logging its output if it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"{argv[0]} failed: {exc}")
        return False
    if result.returncode != 0:
        say(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return result.returncode == 0


def root_partition() -> Path | None:
    """Return the sysfs directory of the block device holding /, if any."""
    device = os.stat("/").st_dev
    sys_dir = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    return sys_dir.resolve() if sys_dir.exists() else None


def grow_root_filesystem() -> None:
    """Grow the root partition and its ext4 file system to fill the disk."""
    partition = root_partition()
    if partition is None or not (partition / "partition").exists():
        return
    disk = partition.parent
    try:
        start = int((partition / "start").read_text())
        size = int((partition / "size").read_text())
        disk_size = int((disk / "size").read_text())
        number = (partition / "partition").read_text().strip()
    except (OSError, ValueError):
        return
    if disk_size - (start + size) < GROW_MIN_SECTORS:
        return
    say(f"growing /dev/{partition.name} to fill /dev/{disk.name}")
    if run_quietly(["growpart", f"/dev/{disk.name}", number]):
        run_quietly(["resize2fs", f"/dev/{partition.name}"], timeout=300)


def dhcp_services() -> list[Service]:
    """A DHCP client (busybox udhcpc) for each network interface that exists now.

    Called at boot and at every rescan, so a hot-plugged NIC gets its address
    within a few seconds; the client keeps renewing, and is restarted if it exits.
    """
    if not BUSYBOX.exists():
        return []
    found = []
    for path in sorted(Path("/sys/class/net").iterdir()):
        if path.name == "lo" or not (path / "device").exists():
            continue
        argv = [str(BUSYBOX), "udhcpc", "-f", "-i", path.name, "-s", str(DHCP_SCRIPT)]
        argv += ["-T", "1", "-t", "5", "-A", "2", "-x", f"hostname:{socket.gethostname()}"]
        log = str(LOG_DIR / f"dhcp-{path.name}.log")
        found.append(Service(f"dhcp on {path.name}", argv, base_environment(), log=log))
    return found


def bring_up_loopback() -> None:
    """Bring the loopback interface up."""
    run_quietly(["ip", "link", "set", "lo", "up"])


def virtio_port(name: str) -> str | None:
    """Return /dev/vportNpM of the virtio-serial port with that name."""
    for name_file in sorted(Path("/sys/class/virtio-ports").glob("*/name")):
        try:
            if name_file.read_text().strip() == name:
                return f"/dev/{name_file.parent.name}"
        except OSError:
            continue
    return None


def console_ttys() -> list[str]:
    """Return the tty devices of the consoles named on the command line."""
    ttys: list[str] = []
    for argument in kernel_arguments():
        if argument.startswith("console="):
            name = argument.split("=", 1)[1].split(",", 1)[0]
            name = "tty1" if name == "tty0" else name
            if Path(f"/dev/{name}").exists() and f"/dev/{name}" not in ttys:
                ttys.append(f"/dev/{name}")
    return ttys or ["/dev/ttyS0"]


def take_controlling_tty() -> None:
    """Make standard input the controlling tty (run in the child, after setsid)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 1)


class Service:
    """A supervised child process, restarted with backoff when it exits."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: str | None = None,
        tty: str | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.tty = tty
        self.pid: int | None = None
        self.started_at = 0.0
        self.next_start = 0.0
        self.backoff = 1.0

    def start(self) -> None:
        """Start the process; on failure try again later."""
        try:
            if self.tty:
                stream = os.open(self.tty, os.O_RDWR | os.O_NOCTTY)
            else:
                stream = os.open(
                    self.log or "/dev/null", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
                )
        except OSError as exc:
            say(f"cannot start {self.name}: {exc}")
            self.next_start = time.monotonic() + 30
            return
        stdin = stream if self.tty else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=stdin,
                stdout=stream,
                stderr=stream,
                cwd="/",
                start_new_session=True,
                preexec_fn=take_controlling_tty if self.tty else None,
            )
        except OSError as exc:
            say(f"cannot start {self.name}: {exc}")
            self.next_start = time.monotonic() + 30
            return
        finally:
            os.close(stream)
        process.returncode = 0  # reaped by the main loop, never by Popen
        self.pid = process.pid
        self.started_at = time.monotonic()

    def exited(self, status: int) -> None:
        """Record the exit of the process and schedule its restart."""
        now = time.monotonic()
        if now - self.started_at > 30:
            self.backoff = 1.0
        delay = 0.2 if self.tty else self.backoff
        self.next_start = now + delay
        self.backoff = min(self.backoff * 2, 30.0)
        self.pid = None
        if not self.tty:
            code = os.waitstatus_to_exitcode(status)
            say(f"{self.name} exited with status {code}; restarting in {delay:.0f} s")


def base_environment() -> dict[str, str]:
    """Return the environment that services start with."""
    return {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "linux"}


def qemu_ga_service() -> Service | None:
    """Describe qemu-ga on its virtio port, if both exist."""
    port = virtio_port(QEMU_GA_PORT_NAME)
    if port is None or not QEMU_GA.exists():
        return None
    argv = [
        str(QEMU_GA),
        "--method=virtio-serial",
        f"--path={port}",
        "--statedir=/run",
        f"--logfile={LOG_DIR / 'qemu-ga.log'}",
    ]
    return Service("qemu-ga", argv, base_environment())


def guest_agent_service() -> Service | None:
    """Describe the minicloud guest agent, if it is installed."""
    if not AGENT_ENTRY.exists():
        return None
    env = base_environment() | {"PYTHONPATH": str(AGENT_HOME), "PYTHONUNBUFFERED": "1"}
    return Service(
        "guestagent",
        ["python3", "-m", "guestagent.serve"],
        env,
        log=str(LOG_DIR / "guestagent.log"),
    )


def console_shell(tty: str) -> Service:
    """Describe a root login shell on a console tty."""
    env = base_environment() | {"TERM": "vt220" if "ttyS" in tty else "linux"}
    return Service(f"shell on {tty}", ["bash", "--login"], env, tty=tty)


class PowerButton:
    """Watches /dev/input/event* for presses of KEY_POWER."""

    def __init__(self) -> None:
        self.devices: dict[str, int] = {}

    def rescan(self) -> None:
        """Open input event devices that appeared since the last scan."""
        for path in sorted(Path("/dev/input").glob("event*")):
            if str(path) in self.devices:
                continue
            try:
                self.devices[str(path)] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue

    def fds(self) -> list[int]:
        """Return the open descriptors to wait on."""
        return list(self.devices.values())

    def pressed(self, ready: list[int]) -> bool:
        """Read pending events; True when the power button went down."""
        pressed = False
        for path, fd in list(self.devices.items()):
            if fd not in ready:
                continue
            try:
                data = os.read(fd, INPUT_EVENT.size * 64)
            except BlockingIOError:
                continue
            except OSError:
                os.close(fd)
                del self.devices[path]
                continue
            usable = len(data) - len(data) % INPUT_EVENT.size
            for _sec, _usec, kind, code, value in INPUT_EVENT.iter_unpack(data[:usable]):
                pressed = pressed or (kind == EV_KEY and code == KEY_POWER and value == 1)
        return pressed


class Init:
    """The supervisor loop and the shutdown sequence."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.power_button = PowerButton()
        self.request: str | None = None
        self.wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        for signum, action in (
            (signal.SIGTERM, "reboot"),
            (signal.SIGINT, "reboot"),
            (signal.SIGUSR1, "poweroff"),
            (signal.SIGUSR2, "poweroff"),
        ):
            signal.signal(signum, self.requester(action))
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop to reap
        self.ctrl_alt_del_to_signal()

    def requester(self, action: str) -> Callable[[int, object], None]:
        """Return a signal handler that asks for a reboot or power-off."""

        def handler(_signum: int, _frame: object) -> None:
            self.request = self.request or action

        return handler

    @staticmethod
    def ctrl_alt_del_to_signal() -> None:
        """Make the kernel send SIGINT on Ctrl-Alt-Del instead of rebooting."""
        LIBC.reboot(0)  # LINUX_REBOOT_CMD_CAD_OFF

    def add_services(self) -> None:
        """Start the services that exist now (again later for late ports)."""
        candidates = [qemu_ga_service(), guest_agent_service(), *dhcp_services()]
        for service in candidates:
            if service is not None and service.name not in self.services:
                self.services[service.name] = service
                service.start()

    def add_shells(self) -> None:
        """Start a root shell on each console."""
        for tty in console_ttys():
            shell = console_shell(tty)
            self.services[shell.name] = shell
            shell.start()

    def reap(self) -> None:
        """Collect exited children and note which services stopped."""
        by_pid = {service.pid: service for service in self.services.values() if service.pid}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in by_pid:
                by_pid[pid].exited(status)

    def supervise(self) -> None:
        """Restart services whose restart time has come."""
        now = time.monotonic()
        for service in self.services.values():
            if service.pid is None and now >= service.next_start:
                service.start()

    def step(self, rescan: bool) -> None:
        """Wait up to a second for a signal, a child or a key, then react."""
        if rescan:
            self.power_button.rescan()
            self.add_services()
        watched = [self.wake_read, *self.power_button.fds()]
        try:
            ready, _, _ = select.select(watched, [], [], 1.0)
        except InterruptedError:
            ready = []
        if self.wake_read in ready:
            while True:
                try:
                    if not os.read(self.wake_read, 512):
                        break
                except BlockingIOError:
                    break
        if self.power_button.pressed(ready):
            say("power button pressed")
            self.request = self.request or "poweroff"
        self.reap()
        self.supervise()

    def run(self) -> str:
        """Supervise until a reboot or power-off is asked for; return which."""
        last_scan = 0.0
        while self.request is None:
            now = time.monotonic()
            try:
                self.step(rescan=now - last_scan >= 5)
            except Exception:  # PID 1 must never die
                traceback.print_exc()
                time.sleep(1)
            if now - last_scan >= 5:
                last_scan = now
        return self.request

    def stop_everything(self) -> None:
        """Hang up the console shells, ask every process to stop, kill the rest."""
        for service in self.services.values():
            if service.tty and service.pid:
                with contextlib.suppress(OSError):
                    os.killpg(service.pid, signal.SIGHUP)
        for signum, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
            try:
                os.kill(-1, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    time.sleep(0.05)


def finish(action: str) -> None:
    """Sync, remount / read-only and reboot or power off; never returns."""
    os.sync()
    if LIBC.mount(b"", b"/", b"", MS_REMOUNT | MS_RDONLY, b"") != 0:
        say(f"remounting / read-only failed: {os.strerror(ctypes.get_errno())}")
    os.sync()
    LIBC.reboot(RB_AUTOBOOT if action == "reboot" else RB_POWER_OFF)
    say(f"reboot(2) failed: {os.strerror(ctypes.get_errno())}")
    while True:
        time.sleep(3600)


def boot(init: Init) -> None:
    """Bring the system up to the point where it is usable."""
    for step in (
        mount_kernel_filesystems,
        set_hostname,
        grow_root_filesystem,
        bring_up_loopback,
        init.power_button.rescan,
        init.add_services,
    ):
        try:
            step()
        except Exception:  # keep booting whatever fails
            traceback.print_exc()


def main() -> None:
    """Boot, supervise, then shut down as asked."""
    os.environ.clear()
    os.environ.update(base_environment())
    say("booting")
    init = Init()
    boot(init)
    console(BANNER)
    init.add_shells()
    action = init.run()
    say("powering off" if action == "poweroff" else "rebooting")
    init.stop_everything()
    finish(action)


if __name__ == "__main__":
    if os.getpid() != 1:
        sys.exit("minicloud-init must run as PID 1")
    main()
