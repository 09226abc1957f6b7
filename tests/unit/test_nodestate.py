"""The node state table: every allowed (state, event) pair, and every other one refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from controlplane import nodestate as ns

ALLOWED = {
    ("created", "connect"): "created",
    ("reconnecting", "connect"): "created",
    ("missing", "connect"): "created",
    ("disabled", "connect"): "disabled",
    ("draining", "connect"): "draining",
    ("deleted", "connect"): "created",
    ("created", "disconnect"): "reconnecting",
    ("disabled", "disconnect"): "disabled",
    ("draining", "disconnect"): "draining",
    ("reconnecting", "deadline"): "missing",
    ("created", "disable"): "disabled",
    ("reconnecting", "disable"): "disabled",
    ("missing", "disable"): "disabled",
    ("disabled", "disable"): "disabled",
    ("created", "enable"): "created",
    ("disabled", "enable"): "created",
    ("draining", "enable"): "created",
    ("created", "drain"): "draining",
    ("disabled", "drain"): "draining",
    ("draining", "drain"): "draining",
    ("draining", "drained"): "disabled",
    ("created", "delete"): "deleted",
    ("reconnecting", "delete"): "deleted",
    ("missing", "delete"): "deleted",
    ("disabled", "delete"): "deleted",
    ("draining", "delete"): "deleted",
}
PAIRS = list(itertools.product(ns.STATES, ns.EVENTS))


def test_states_and_events() -> None:
    """The table knows exactly the documented states and events."""
    assert set(ns.STATES) == {
        "created",
        "reconnecting",
        "missing",
        "disabled",
        "draining",
        "deleted",
    }
    assert set(ns.EVENTS) == {
        "connect",
        "disconnect",
        "deadline",
        "disable",
        "enable",
        "drain",
        "drained",
        "delete",
    }


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_every_pair(state: str, event: str) -> None:
    """An allowed pair gives the table's answer; every other pair is refused."""
    if (state, event) in ALLOWED:
        assert ns.decide(state, event) == ALLOWED[(state, event)]
    else:
        with pytest.raises(ns.Refused):
            ns.decide(state, event)


def test_unknown_event_is_refused() -> None:
    """An event the table does not know is refused, whatever the state."""
    with pytest.raises(ns.Refused, match="unknown node event"):
        ns.decide("created", "explode")


def test_only_created_nodes_take_new_instances() -> None:
    """Placement may use a created node only, and says why for the others."""
    assert ns.refusal("created") == ""
    for state in set(ns.STATES) - {"created"}:
        assert ns.refusal(state) == f"is {state}"


def test_away_states() -> None:
    """Reconnecting and missing nodes are away: their instances' power is unknown."""
    assert {"reconnecting", "missing"} == ns.AWAY


def test_the_operators_guide_shows_the_table_as_it_is() -> None:
    """docs/operations.md's state table has one row per state, each cell the table's answer."""
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for state in ns.STATES:
        cells = [ns.TABLE.get((state, event), "—") for event in ns.EVENTS]
        assert f"| **{state}** | " + " | ".join(cells) + " |" in doc, state
