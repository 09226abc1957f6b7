"""Freezing the guest's file systems around a host-side disk snapshot (``fsfreeze``).

Standard library only. ``Freezer.freeze`` syncs, then freezes (``FIFREEZE``)
each writable local file system of the mount table, innermost mounts first;
what cannot be frozen (no such support, already frozen by someone else, a
bind mount of a file system already frozen) is skipped and reported. One
freeze at a time: a second is refused until a thaw. ``thaw`` thaws them
(``FITHAW``), outermost first. A freeze thaws itself after its timeout
(at most ``MAX_TIMEOUT``) when no thaw comes, and the agent thaws at once
when the host that froze disconnects, so a host that vanishes cannot leave
the guest frozen.

While frozen nothing may write to those file systems, the agent included: a
write would block until the thaw. So nothing is logged, and nothing is
imported, between freeze and thaw (the log line comes after the thaw).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
MOUNTS = "/proc/self/mounts"
# File system types never frozen: virtual, network, read-only by design, or the config drive.
SKIP_TYPES = frozenset(
    {"iso9660", "squashfs", "udf", "nfs", "nfs4", "cifs", "smb3", "fuse", "fuseblk", "9p"}
)
# What FIFREEZE says for a file system that cannot be frozen: skipped, not an error.
NOT_FREEZABLE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS}

Ioctl = Callable[[int, int, int], object]


class FreezeError(Exception):
    """A freeze or thaw could not be done; the message says why."""


class Mount:
    """One line of the mount table."""

    def __init__(self, source: str, path: str, fstype: str, options: str) -> None:
        self.source = source
        self.path = path
        self.fstype = fstype
        self.options = options.split(",")


def unescape(field: str) -> str:
    r"""A mount table field with its octal escapes (``\040`` for a space) decoded."""
    out, at = [], 0
    while at < len(field):
        if field[at] == "\\" and field[at + 1 : at + 4].isdigit() and at + 4 <= len(field):
            out.append(chr(int(field[at + 1 : at + 4], 8)))
            at += 4
        else:
            out.append(field[at])
            at += 1
    return "".join(out)


def read_mounts(path: str = MOUNTS) -> list[Mount]:
    """The mount table, in mount order."""
    mounts = []
    with open(path) as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 4:
                mounts.append(Mount(*(unescape(f) for f in fields[:4])))
    return mounts


class Freezer:
    """The guest's frozen file systems (one freeze at a time) and their automatic thaw."""

    def __init__(
        self,
        mounts: str = MOUNTS,
        ioctl: Ioctl = fcntl.ioctl,
        sync: Callable[[], None] = os.sync,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.mounts = mounts
        self.ioctl = ioctl
        self.sync = sync
        self.log = log
        self.lock = threading.Lock()
        # Frozen mount points (freeze order) and their open descriptors.
        self.frozen: list[tuple[str, int]] = []
        self.owner: object = None
        self.timer: threading.Timer | None = None
        self.generation = 0  # one per freeze, so an old timer cannot thaw a newer freeze
        # The last freeze ended by its timeout (the next thaw says so, then it is reset).
        self.expired = False

    def candidates(self) -> tuple[list[Mount], list[dict[str, str]]]:
        """Writable local file systems to freeze (innermost first), and those skipped."""
        chosen, skipped = [], []
        for mount in reversed(read_mounts(self.mounts)):
            if not mount.source.startswith("/dev/"):
                continue  # proc, sysfs, tmpfs, devtmpfs, cgroup...: nothing on a disk
            if "rw" not in mount.options:
                skipped.append({"path": mount.path, "reason": "read-only"})
            elif mount.fstype in SKIP_TYPES:
                skipped.append({"path": mount.path, "reason": f"{mount.fstype} is not frozen"})
            else:
                chosen.append(mount)
        return chosen, skipped

    def freeze(self, timeout: float, owner: object) -> dict[str, object]:
        """Sync and freeze; the OK fields: ``frozen``, ``skipped``, ``timeout``."""
        timeout = min(max(timeout, 0.1), MAX_TIMEOUT)
        with self.lock:
            if self.frozen:
                raise FreezeError("the file systems are frozen already; thaw them first")
            try:
                chosen, skipped = self.candidates()
            except OSError as exc:
                raise FreezeError(f"cannot read the mount table: {exc}") from exc
            self.sync()
            devices: set[int] = set()
            for mount in chosen:
                reason = self._freeze_one(mount, devices)
                if reason:
                    skipped.append({"path": mount.path, "reason": reason})
            self.owner = owner
            self.expired = False
            self.generation += 1
            if self.frozen:
                self.timer = threading.Timer(timeout, self._expire, (self.generation,))
                self.timer.daemon = True
                self.timer.start()
            return {
                "frozen": [path for path, _ in self.frozen],
                "skipped": skipped,
                "timeout": timeout,
            }

    def _freeze_one(self, mount: Mount, devices: set[int]) -> str:
        """Freeze one mount point; the reason it was skipped, or "" once frozen."""
        try:
            fd = os.open(mount.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot open: {exc.strerror or exc}"
        try:
            device = os.fstat(fd).st_dev
            if device in devices:
                os.close(fd)
                return "the same file system is mounted elsewhere (frozen there)"
            self.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            os.close(fd)
            if exc.errno in NOT_FREEZABLE:
                return f"{mount.fstype} cannot be frozen"
            if exc.errno == errno.EBUSY:
                return "frozen already (not by this agent)"
            self._thaw_all()
            raise FreezeError(f"cannot freeze {mount.path}: {exc.strerror or exc}") from exc
        devices.add(device)
        self.frozen.append((mount.path, fd))
        return ""

    def thaw(self) -> dict[str, object]:
        """Thaw what is frozen; the OK fields: ``thawed`` (mount points), ``expired``.

        ``expired`` says the last freeze had already thawed itself at its
        timeout, so the host's snapshot may postdate the thaw.
        """
        with self.lock:
            thawed = self._thaw_all()
            expired, self.expired = self.expired, False
        if thawed:
            self.log(f"thawed {', '.join(thawed)}")
        return {"thawed": thawed, "expired": expired}

    def release(self, owner: object) -> None:
        """Thaw at once when the freeze's owner (a host session) is gone."""
        with self.lock:
            if self.owner is not owner or not self.frozen:
                return
            thawed = self._thaw_all()
        self.log(f"the host that froze left: thawed {', '.join(thawed)}")

    def _expire(self, generation: int) -> None:
        with self.lock:
            if generation != self.generation or not self.frozen:
                return
            thawed = self._thaw_all()
            self.expired = True
        self.log(f"no thaw came in time: thawed {', '.join(thawed)}")

    def _thaw_all(self) -> list[str]:
        """Thaw in reverse order of freezing (call with the lock held)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        thawed = []
        for path, fd in reversed(self.frozen):
            try:
                self.ioctl(fd, FITHAW, 0)
                thawed.append(path)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not frozen (any more): someone else thawed it
                    thawed.append(path)
            finally:
                os.close(fd)
        self.frozen = []
        self.owner = None
        return thawed
