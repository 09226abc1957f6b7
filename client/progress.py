"""A tiny progress bar on stderr for transfers (no extra packages)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints "label  12.0/64.0 MiB  18%  31.2 MiB/s" as bytes move, at most 10 times a second."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.out = out
        self.started = time.monotonic()
        self._shown = 0.0

    def __call__(self, count: int) -> None:
        """Count more bytes moved."""
        self.done += count
        now = time.monotonic()
        if now - self._shown >= 0.1 or self.done >= self.total:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        mib = 1024 * 1024
        rate = self.done / max(now - self.started, 1e-6) / mib
        percent = 100 * self.done / self.total if self.total else 100
        self.out.write(
            f"\r{self.label}  {self.done / mib:.1f}/{self.total / mib:.1f} MiB  "
            f"{percent:3.0f}%  {rate:.1f} MiB/s"
        )
        self.out.flush()

    def finish(self) -> None:
        """End the line."""
        self._draw(time.monotonic())
        self.out.write("\n")
        self.out.flush()
