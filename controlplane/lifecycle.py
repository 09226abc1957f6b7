"""The instance lifecycle as pure tables: no I/O, no clock, no globals.

``TRANSITIONS`` lists every allowed change of ``state`` (Shaken Fist's model:
initial → preflight → creating → created, a ``*-error`` state per phase that
leads to ``error``, and delete-wait → deleted). ``RULES`` says, for each
lifecycle event, which states and power states it may happen in and what it
leads to. ``decide`` applies a rule and returns the next state, power state
and the actions the caller must perform; it raises ``Refused`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.nodewire.power import POWER_TRANSITIONS, PowerState


class State(StrEnum):
    """An instance's lifecycle state (each compares equal to its string, as stored)."""

    INITIAL = "initial"
    PREFLIGHT = "preflight"
    CREATING = "creating"
    CREATED = "created"
    DELETE_WAIT = "delete-wait"
    DELETED = "deleted"
    ERROR = "error"
    INITIAL_ERROR = "initial-error"
    PREFLIGHT_ERROR = "preflight-error"
    CREATING_ERROR = "creating-error"
    CREATED_ERROR = "created-error"


INITIAL = State.INITIAL
PREFLIGHT = State.PREFLIGHT
CREATING = State.CREATING
CREATED = State.CREATED
DELETE_WAIT = State.DELETE_WAIT
DELETED = State.DELETED
ERROR = State.ERROR
INITIAL_ERROR = State.INITIAL_ERROR
PREFLIGHT_ERROR = State.PREFLIGHT_ERROR
CREATING_ERROR = State.CREATING_ERROR
CREATED_ERROR = State.CREATED_ERROR

STATES: tuple[str, ...] = tuple(State)
PHASE_ERROR: dict[str, str] = {
    INITIAL: INITIAL_ERROR,
    PREFLIGHT: PREFLIGHT_ERROR,
    CREATING: CREATING_ERROR,
    CREATED: CREATED_ERROR,
}
# An instance's power state: "initial" until a node has reported one, then the node's;
# "unknown" while its node is out of reach (reconnecting or missing), until it reports again.
INITIAL_POWER = "initial"
UNKNOWN_POWER = "unknown"
POWER_STATES: tuple[str, ...] = (INITIAL_POWER, *PowerState, UNKNOWN_POWER)

_ERRORS = frozenset(PHASE_ERROR.values())
TRANSITIONS: dict[str, frozenset[str]] = {
    INITIAL: frozenset({PREFLIGHT, INITIAL_ERROR, DELETED}),
    PREFLIGHT: frozenset({CREATING, PREFLIGHT_ERROR, DELETED}),
    CREATING: frozenset({CREATED, CREATING_ERROR, DELETE_WAIT}),
    CREATED: frozenset({CREATED_ERROR, DELETE_WAIT}),
    **{e: frozenset({ERROR, DELETE_WAIT, DELETED}) for e in _ERRORS},
    ERROR: frozenset({DELETE_WAIT, DELETED}),
    DELETE_WAIT: frozenset({DELETED}),
    DELETED: frozenset(),
}

# Power operations a caller may ask for: power states they may start from
# (the wire's one power-action table, which the node's drivers also follow).
POWER_OPS: dict[str, frozenset[str]] = {
    action: starts for action, (starts, _) in POWER_TRANSITIONS.items()
}

# States in which a domain may exist on a node.
ON_NODE = frozenset({CREATING, CREATED, DELETE_WAIT, CREATING_ERROR, CREATED_ERROR, ERROR})


class Refused(Exception):
    """The event is not allowed in the instance's current state."""


@dataclass(frozen=True)
class View:
    """The part of an instance the lifecycle looks at."""

    state: str
    power_state: str
    placed: bool = False


@dataclass(frozen=True)
class Decision:
    """Where an event leads, and what must be done about it."""

    state: str
    power_state: str
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One lifecycle event: where it may happen and where it leads."""

    states: frozenset[str]
    to_state: str | None = None
    powers: frozenset[str] | None = None
    to_power: str | None = None
    actions: tuple[str, ...] = ()


_LIVE = frozenset(STATES) - {DELETED, DELETE_WAIT}
RULES: dict[str, Rule] = {
    "schedule": Rule(frozenset({INITIAL}), PREFLIGHT),
    "place": Rule(frozenset({PREFLIGHT}), CREATING, actions=("create-domain",)),
    "created": Rule(frozenset({CREATING}), CREATED, to_power="on"),
    "fail": Rule(frozenset(PHASE_ERROR)),  # to the phase's *-error state
    "settle-error": Rule(_ERRORS, ERROR),
    "delete": Rule(_LIVE),  # delete-wait on a node, else straight to deleted
    "destroyed": Rule(frozenset({DELETE_WAIT}), DELETED, to_power="off"),
    "observed": Rule(ON_NODE),  # a node saw a new power state
    # The instance's node went out of reach: nobody knows its power state until it is back.
    "node-lost": Rule(frozenset({CREATED}), to_power=UNKNOWN_POWER),
    **{
        f"power-{op}": Rule(frozenset({CREATED}), powers=starts, actions=(f"power-{op}",))
        for op, starts in POWER_OPS.items()
    },
}


def can_transition(current: str, target: str) -> bool:
    """Whether state may change from current to target."""
    return target in TRANSITIONS.get(current, frozenset())


def decide(view: View, event: str, observed_power: str = "") -> Decision:
    """The next state, power state and actions for an event, or Refused."""
    rule = RULES.get(event)
    if rule is None:
        raise Refused(f"unknown lifecycle event {event!r}")
    if view.state not in rule.states:
        raise Refused(f"cannot {event} an instance that is {view.state}")
    if rule.powers is not None and view.power_state not in rule.powers:
        raise Refused(
            f"cannot {event.removeprefix('power-')} an instance that is powered {view.power_state}"
        )
    state = rule.to_state or view.state
    power = rule.to_power or view.power_state
    actions = rule.actions
    if event == "fail":
        state = PHASE_ERROR[view.state]
    elif event == "delete":
        state, actions = (DELETE_WAIT, ("destroy-domain",)) if view.placed else (DELETED, ())
    elif event == "observed":
        if observed_power not in POWER_STATES:
            raise Refused(f"unknown power state {observed_power!r}")
        power = observed_power
    if state != view.state and not can_transition(view.state, state):
        raise Refused(f"{view.state} cannot become {state}")
    return Decision(state=state, power_state=power, actions=actions)
