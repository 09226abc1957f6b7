"""An instance's serial console log on disk: read its tail, or empty it.

libvirt hands the serial device's ``<log>`` file to virtlogd, which appends
to ``console.log`` and rotates it (by default at 2 MiB, keeping three older
files ``console.log.0`` (newest) to ``console.log.2``), so the log survives
node-agent restarts and never fills the disk. Reading concatenates the
rotated files, oldest first, then the live one. virtlogd and QEMU open the
file with ``O_APPEND``, so truncating it in place is safe: the next byte
lands at the new end.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_LENGTH = 10240
MAX_BACKUPS = 16
# Never more than this in one answer (it travels in one gRPC message).
MAX_READ = 16 * 1024 * 1024


def log_files(path: Path) -> list[Path]:
    """The console log's files, oldest first: rotated backups, then the live file."""
    backups = [path.with_name(f"{path.name}.{i}") for i in range(MAX_BACKUPS)]
    files = [p for p in reversed(backups) if p.exists()]
    if path.exists():
        files.append(path)
    return files


def read_tail(path: Path, length: int) -> bytes:
    """The last ``length`` bytes of the log (DEFAULT_LENGTH when 0; everything when -1).

    "Everything" is capped at MAX_READ bytes (the newest ones).
    """
    if length < -1:
        raise ValueError(f"length must be -1 (all), 0 (default) or positive, not {length}")
    wanted = DEFAULT_LENGTH if length == 0 else MAX_READ if length == -1 else min(length, MAX_READ)
    pieces: list[bytes] = []
    remaining = wanted
    for file in reversed(log_files(path)):
        if remaining <= 0:
            break
        try:
            with file.open("rb") as handle:
                size = handle.seek(0, 2)
                start = max(0, size - remaining)
                handle.seek(start)
                data = handle.read(size - start)
        except FileNotFoundError:  # rotated away between listing and opening
            continue
        pieces.append(data)
        remaining -= len(data)
    return b"".join(reversed(pieces))


def clear(path: Path) -> None:
    """Empty the live log in place and delete the rotated ones."""
    for file in log_files(path):
        if file == path:
            with file.open("r+b") as handle:
                handle.truncate(0)
        else:
            file.unlink(missing_ok=True)
