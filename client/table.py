"""Rows printed as columns sized to their content, for the CLI's list commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any) -> str:
    """A value as its column shows it: lists joined by commas, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return str(value)


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The header and rows, each column as wide as its widest cell (the last one unpadded)."""
    table = [list(headers), *([cell(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = []
    for line in table:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    return "\n".join(lines)
