"""The node state machine as one pure table: no I/O, no clock, no globals.

A node is ``created`` while its agent's stream is up, ``reconnecting`` once
the stream is lost, ``missing`` when it stayed away past the control plane's
``MINICLOUD_NODE_MISSING_AFTER``, and ``deleted`` when an administrator
removed it. ``disabled`` and ``draining`` are the administrator's: nothing new
is placed on such a node (draining also moves its instances away), and they
stick while the node comes and goes, until ``enable``. ``TABLE`` maps every
allowed (state, event) pair to the next state; ``decide`` looks one up and
raises ``Refused`` for every other pair.
"""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    """A node's state (each compares equal to its string, as stored)."""

    CREATED = "created"
    RECONNECTING = "reconnecting"
    MISSING = "missing"
    DISABLED = "disabled"
    DRAINING = "draining"
    DELETED = "deleted"


class NodeEvent(StrEnum):
    """What happens to a node."""

    CONNECT = "connect"  # its agent opened a stream
    DISCONNECT = "disconnect"  # the stream ended
    DEADLINE = "deadline"  # reconnecting for longer than the missing deadline
    DISABLE = "disable"
    ENABLE = "enable"
    DRAIN = "drain"
    DRAINED = "drained"  # a drain moved everything it could: the node stays disabled
    DELETE = "delete"


CREATED, RECONNECTING, MISSING = NodeState.CREATED, NodeState.RECONNECTING, NodeState.MISSING
DISABLED, DRAINING, DELETED = NodeState.DISABLED, NodeState.DRAINING, NodeState.DELETED
STATES: tuple[str, ...] = tuple(NodeState)
EVENTS: tuple[str, ...] = tuple(NodeEvent)

E = NodeEvent
TABLE: dict[tuple[str, str], str] = {
    # Connectivity: only the states it owns change; admin states stick.
    (CREATED, E.CONNECT): CREATED,
    (RECONNECTING, E.CONNECT): CREATED,
    (MISSING, E.CONNECT): CREATED,
    (DISABLED, E.CONNECT): DISABLED,
    (DRAINING, E.CONNECT): DRAINING,
    # A deleted node whose agent comes back joins again, empty.
    (DELETED, E.CONNECT): CREATED,
    (CREATED, E.DISCONNECT): RECONNECTING,
    (DISABLED, E.DISCONNECT): DISABLED,
    (DRAINING, E.DISCONNECT): DRAINING,
    (RECONNECTING, E.DEADLINE): MISSING,
    # The administrator's.
    (CREATED, E.DISABLE): DISABLED,
    (RECONNECTING, E.DISABLE): DISABLED,
    (MISSING, E.DISABLE): DISABLED,
    (DISABLED, E.DISABLE): DISABLED,
    (DISABLED, E.ENABLE): CREATED,
    (DRAINING, E.ENABLE): CREATED,
    (CREATED, E.ENABLE): CREATED,
    (CREATED, E.DRAIN): DRAINING,
    (DISABLED, E.DRAIN): DRAINING,
    (DRAINING, E.DRAIN): DRAINING,
    (DRAINING, E.DRAINED): DISABLED,
    **{
        (state, E.DELETE): DELETED for state in (CREATED, RECONNECTING, MISSING, DISABLED, DRAINING)
    },
}

# Where new instances may go.
PLACEABLE = frozenset({CREATED})
# Where the node's instances are out of reach: their power state is unknown.
AWAY = frozenset({RECONNECTING, MISSING})


class Refused(Exception):
    """The event is not allowed in the node's current state."""


def decide(state: str, event: str) -> str:
    """The state a node in state moves to on event, or Refused."""
    if event not in EVENTS:
        raise Refused(f"unknown node event {event!r}")
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise Refused(f"cannot {event} a node that is {state}") from None


def refusal(state: str) -> str:
    """Why no new instance may be placed on a node in state ("" if one may)."""
    if state in PLACEABLE:
        return ""
    return f"is {state}"
