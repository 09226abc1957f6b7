"""The guest agent's freezer: which file systems it freezes, thaws, and thaws by itself.

No real file system is frozen: the ioctl is a fake that records what it is
asked, and the mount table is a file naming temporary folders.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guestagent.freeze import FIFREEZE, FITHAW, MAX_TIMEOUT, FreezeError, Freezer, unescape
from guestagent.handlers import FreezeHandler, ThawHandler
from guestagent.protocol import Frame, Kind


class FakeIoctl:
    """Records freezes and thaws by path; fails a path's freeze with a chosen errno."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}

    def __call__(self, fd: int, request: int, arg: int) -> object:
        path = os.readlink(f"/proc/self/fd/{fd}")
        what = {FIFREEZE: "freeze", FITHAW: "thaw"}[request]
        if what == "freeze" and path in self.fail:
            raise OSError(self.fail[path], os.strerror(self.fail[path]))
        self.calls.append((what, path))
        return 0


def mount_table(tmp_path: Path, lines: list[str]) -> str:
    """A mount table file holding these lines."""
    table = tmp_path / "mounts"
    table.write_text("".join(line + "\n" for line in lines))
    return str(table)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder standing for the guest's root file system."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def freezer_for(
    tmp_path: Path, lines: list[str], ioctl: FakeIoctl, log: Callable[[str], None] = print
) -> Freezer:
    """A freezer over a fake mount table, with the fake ioctl and no real sync."""
    return Freezer(mount_table(tmp_path, lines), ioctl, sync=lambda: None, log=log)


def test_freezes_writable_local_file_systems_and_skips_the_rest(tmp_path: Path, root: Path) -> None:
    """Only rw file systems on a /dev device are frozen; read-only ones and the config drive
    are reported skipped, virtual ones are not mentioned."""
    ioctl = FakeIoctl()
    freezer = freezer_for(
        tmp_path,
        [
            f"/dev/vdc {tmp_path}/data vfat rw 0 0",
            f"/dev/vda1 {root} ext4 rw,relatime 0 0",
            "proc /proc proc rw 0 0",
            f"tmpfs {tmp_path} tmpfs rw 0 0",
            f"/dev/vdb {tmp_path}/cd iso9660 ro 0 0",
            f"/dev/vdd {tmp_path}/iso9660rw iso9660 rw 0 0",
        ],
        ioctl,
    )
    (tmp_path / "data").mkdir()
    answer = freezer.freeze(5, owner="s")
    assert answer["frozen"] == [str(root)]  # data shares root's device here: skipped
    reasons = {item["path"]: item["reason"] for item in answer["skipped"]}  # type: ignore[attr-defined]
    assert reasons[f"{tmp_path}/cd"] == "read-only"
    assert "is not frozen" in reasons[f"{tmp_path}/iso9660rw"]
    assert "mounted elsewhere" in reasons[f"{tmp_path}/data"]
    assert ioctl.calls == [("freeze", str(root))]
    assert freezer.thaw() == {"thawed": [str(root)], "expired": False}
    assert ioctl.calls[-1] == ("thaw", str(root))


def test_what_cannot_be_frozen_is_skipped_and_a_real_failure_thaws_back(
    tmp_path: Path, root: Path
) -> None:
    """EOPNOTSUPP and EBUSY skip a file system; any other error thaws what was frozen."""
    ioctl = FakeIoctl()
    other = Path(os.environ.get("MINICLOUD_TEST_OTHER_FS", "/dev/shm"))
    if os.stat(other).st_dev == os.stat(root).st_dev:
        pytest.skip("needs a second file system for the test")
    lines = [f"/dev/vda1 {root} ext4 rw 0 0", f"/dev/vdc {other} ext4 rw 0 0"]
    ioctl = FakeIoctl()
    ioctl.fail[str(other)] = errno.EOPNOTSUPP
    freezer = freezer_for(tmp_path, lines, ioctl)
    answer = freezer.freeze(5, owner="s")
    assert answer["frozen"] == [str(root)]
    assert answer["skipped"] == [{"path": str(other), "reason": "ext4 cannot be frozen"}]
    freezer.thaw()

    ioctl.fail[str(root)] = errno.EIO
    ioctl.fail.pop(str(other))
    ioctl.calls.clear()
    with pytest.raises(FreezeError, match="cannot freeze"):
        freezer.freeze(5, owner="s")
    # innermost first: other was frozen, then root failed, and other was thawed back
    assert ioctl.calls == [("freeze", str(other)), ("thaw", str(other))]
    assert freezer.frozen == []


def test_one_freeze_at_a_time_and_thaw_without_freeze_is_empty(tmp_path: Path, root: Path) -> None:
    """A second freeze is refused until a thaw; a thaw with nothing frozen answers no paths."""
    freezer = freezer_for(tmp_path, [f"/dev/vda1 {root} ext4 rw 0 0"], FakeIoctl())
    assert freezer.thaw() == {"thawed": [], "expired": False}
    freezer.freeze(5, owner="s")
    with pytest.raises(FreezeError, match="frozen already"):
        freezer.freeze(5, owner="s")
    freezer.thaw()
    freezer.freeze(5, owner="s")
    freezer.thaw()


def test_a_freeze_thaws_itself_at_its_timeout(tmp_path: Path, root: Path) -> None:
    """With no thaw, the freeze ends by itself; the late thaw says it had expired."""
    ioctl = FakeIoctl()
    freezer = freezer_for(tmp_path, [f"/dev/vda1 {root} ext4 rw 0 0"], ioctl)
    assert freezer.freeze(0.2, owner="s")["timeout"] == 0.2
    deadline = time.monotonic() + 5
    while freezer.frozen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert freezer.frozen == []
    assert ioctl.calls[-1] == ("thaw", str(root))
    assert freezer.thaw() == {"thawed": [], "expired": True}
    assert freezer.freeze(10_000, owner="s")["timeout"] == MAX_TIMEOUT
    freezer.thaw()


def test_the_owner_leaving_thaws_at_once(tmp_path: Path, root: Path) -> None:
    """Releasing the session that froze thaws; another session's release does nothing."""
    freezer = freezer_for(tmp_path, [f"/dev/vda1 {root} ext4 rw 0 0"], FakeIoctl())
    owner = object()
    freezer.freeze(30, owner=owner)
    freezer.release(object())
    assert freezer.frozen
    freezer.release(owner)
    assert freezer.frozen == []


def test_mount_points_with_escaped_spaces() -> None:
    """The mount table's octal escapes are decoded."""
    assert unescape(r"/mnt/my\040disk") == "/mnt/my disk"
    assert unescape("/plain") == "/plain"


def test_freeze_and_thaw_requests_answer_ok(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The freeze and thaw ops answer one OK each, and a second freeze one ERROR."""
    import guestagent.handlers as handlers

    monkeypatch.setattr(
        handlers, "FREEZER", freezer_for(tmp_path, [f"/dev/vda1 {root} ext4 rw 0 0"], FakeIoctl())
    )
    sent: list[Frame] = []

    def send(frame: Frame) -> bool:
        sent.append(frame)
        return True

    request = Frame(Kind.REQUEST, 3, {"op": "freeze", "timeout": 5})
    FreezeHandler(3, send, request).start()
    FreezeHandler(4, send, request).start()
    ThawHandler(5, send).start()
    assert [(f.kind, f.request_id) for f in sent] == [(Kind.OK, 3), (Kind.ERROR, 4), (Kind.OK, 5)]
    assert sent[0].fields["frozen"] == [str(root)]
    assert sent[2].fields["thawed"] == [str(root)]
