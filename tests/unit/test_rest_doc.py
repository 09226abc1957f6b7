"""docs/rest.md's table of routes not implemented is the gateway's own."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.unimplemented import UNSERVED

DOC = Path(__file__).resolve().parents[2] / "docs" / "rest.md"


def test_the_not_implemented_table_matches_the_code() -> None:
    """Every row of gateway.unimplemented is in the doc's table, and no other."""
    text = DOC.read_text()
    section = text.split("## What is not implemented", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (?:`([^`]+)`)? ?\|$", section, re.M)
    assert {(m, p, t) for m, p, t in rows} == {(u.method, u.path, u.token) for u in UNSERVED}
