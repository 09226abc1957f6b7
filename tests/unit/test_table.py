"""The CLI's list tables: columns as wide as their content."""

from __future__ import annotations

from client.table import render


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    """Each column is padded to its widest cell, two spaces apart; the last is not padded."""
    text = render(["name", "state", "keys"], [["a", "created", ["k1", "k2"]], ["longer", None, []]])
    assert text.splitlines() == [
        "name    state    keys",
        "a       created  k1,k2",
        "longer",
    ]


def test_a_table_without_rows_is_its_header() -> None:
    """No rows: just the header line."""
    assert render(["uuid", "name"], []) == "uuid  name"
