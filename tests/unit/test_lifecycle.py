"""The instance lifecycle tables: every allowed change, and every other one refused."""

from __future__ import annotations

import itertools

import pytest

from controlplane import lifecycle as lc

ALLOWED = {
    ("initial", "preflight"),
    ("initial", "initial-error"),
    ("initial", "deleted"),
    ("preflight", "creating"),
    ("preflight", "preflight-error"),
    ("preflight", "deleted"),
    ("creating", "created"),
    ("creating", "creating-error"),
    ("creating", "delete-wait"),
    ("created", "created-error"),
    ("created", "delete-wait"),
    ("error", "delete-wait"),
    ("error", "deleted"),
    ("delete-wait", "deleted"),
    *(
        (err, target)
        for err in ("initial-error", "preflight-error", "creating-error", "created-error")
        for target in ("error", "delete-wait", "deleted")
    ),
}
PAIRS = list(itertools.product(lc.STATES, lc.STATES))


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_transition_table(current: str, target: str) -> None:
    """A state change is allowed exactly when it is in the documented list."""
    assert lc.can_transition(current, target) == ((current, target) in ALLOWED)


def test_deleted_is_final() -> None:
    """Nothing leaves deleted."""
    assert lc.TRANSITIONS["deleted"] == frozenset()


def test_create_path() -> None:
    """schedule, place and created walk initial to created with power on, asking for a domain."""
    view = lc.View("initial", "initial")
    d1 = lc.decide(view, "schedule")
    d2 = lc.decide(lc.View(d1.state, d1.power_state), "place")
    d3 = lc.decide(lc.View(d2.state, d2.power_state, placed=True), "created")
    assert (d1.state, d2.state, d3.state) == ("preflight", "creating", "created")
    assert d2.actions == ("create-domain",)
    assert d3.power_state == "on"


@pytest.mark.parametrize("phase", ["initial", "preflight", "creating", "created"])
def test_fail_goes_to_the_phase_error_then_error(phase: str) -> None:
    """A failure moves to the phase's *-error state, which settles into error."""
    failed = lc.decide(lc.View(phase, "on"), "fail")
    assert failed.state == f"{phase}-error"
    assert lc.decide(lc.View(failed.state, "on"), "settle-error").state == "error"


def test_delete_placed_waits_for_the_node() -> None:
    """Deleting a placed instance goes to delete-wait and asks the node to destroy it."""
    d = lc.decide(lc.View("created", "on", placed=True), "delete")
    assert (d.state, d.actions) == ("delete-wait", ("destroy-domain",))
    done = lc.decide(lc.View("delete-wait", "on", placed=True), "destroyed")
    assert (done.state, done.power_state) == ("deleted", "off")


def test_delete_unplaced_is_immediate() -> None:
    """An instance never placed on a node is deleted at once."""
    d = lc.decide(lc.View("error", "initial", placed=False), "delete")
    assert (d.state, d.actions) == ("deleted", ())


@pytest.mark.parametrize("state", ["deleted", "delete-wait"])
def test_delete_twice_is_refused(state: str) -> None:
    """A deleted or deleting instance cannot be deleted again."""
    with pytest.raises(lc.Refused):
        lc.decide(lc.View(state, "off", placed=True), "delete")


POWER_CASES = [
    (op, power, power in starts) for op, starts in lc.POWER_OPS.items() for power in lc.POWER_STATES
]


@pytest.mark.parametrize(("op", "power", "allowed"), POWER_CASES)
def test_power_ops_by_power_state(op: str, power: str, allowed: bool) -> None:
    """Each power operation is allowed from exactly its listed power states."""
    view = lc.View("created", power, placed=True)
    if allowed:
        assert lc.decide(view, f"power-{op}").actions == (f"power-{op}",)
    else:
        with pytest.raises(lc.Refused):
            lc.decide(view, f"power-{op}")


@pytest.mark.parametrize("state", [s for s in lc.STATES if s != "created"])
def test_power_ops_need_created(state: str) -> None:
    """Power operations are refused unless the instance is created."""
    with pytest.raises(lc.Refused):
        lc.decide(lc.View(state, "on", placed=True), "power-off")


def test_observed_power_updates_power_only() -> None:
    """An observation changes power_state and nothing else."""
    d = lc.decide(lc.View("created", "on", placed=True), "observed", "off")
    assert (d.state, d.power_state, d.actions) == ("created", "off", ())


def test_observed_unknown_power_is_refused() -> None:
    """An observation of a power state we do not know is refused."""
    with pytest.raises(lc.Refused):
        lc.decide(lc.View("created", "on", placed=True), "observed", "exploded")


def test_unknown_event_is_refused() -> None:
    """Events not in the rules are refused."""
    with pytest.raises(lc.Refused):
        lc.decide(lc.View("created", "on"), "teleport")


def test_every_rule_stays_within_the_transition_table() -> None:
    """No rule leads anywhere the transition table does not allow."""
    for rule in lc.RULES.values():
        if rule.to_state is not None:
            for state in rule.states:
                assert state == rule.to_state or lc.can_transition(state, rule.to_state)


def test_unknown_is_a_power_state() -> None:
    """unknown is one of the power states an instance may report."""
    assert "unknown" in lc.POWER_STATES


@pytest.mark.parametrize("power", lc.POWER_STATES)
def test_node_lost_makes_power_unknown(power: str) -> None:
    """Losing its node turns a created instance's power state unknown, whatever it was."""
    d = lc.decide(lc.View("created", power, placed=True), "node-lost")
    assert (d.state, d.power_state, d.actions) == ("created", "unknown", ())


@pytest.mark.parametrize("state", [s for s in lc.STATES if s != "created"])
def test_node_lost_needs_created(state: str) -> None:
    """Only created instances turn unknown; others keep their power state."""
    with pytest.raises(lc.Refused):
        lc.decide(lc.View(state, "on", placed=True), "node-lost")


@pytest.mark.parametrize("op", list(lc.POWER_OPS))
def test_no_power_op_from_unknown(op: str) -> None:
    """No power operation is allowed while the power state is unknown."""
    with pytest.raises(lc.Refused, match="powered unknown"):
        lc.decide(lc.View("created", "unknown", placed=True), f"power-{op}")


@pytest.mark.parametrize("power", ["on", "off", "paused", "crashed"])
def test_observation_overwrites_unknown(power: str) -> None:
    """When the node is back, what it observes replaces unknown."""
    d = lc.decide(lc.View("created", "unknown", placed=True), "observed", power)
    assert d.power_state == power
