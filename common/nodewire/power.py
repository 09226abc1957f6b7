"""Power states and actions, and the one table of which states each action may start from.

One table for both sides: the control plane's lifecycle refuses the same
actions the node's hypervisor drivers refuse.
"""

from __future__ import annotations

from enum import StrEnum


class PowerState(StrEnum):
    """A domain's power state as a node observes it (each compares equal to its string)."""

    ON = "on"
    OFF = "off"
    PAUSED = "paused"
    CRASHED = "crashed"


class PowerAction(StrEnum):
    """A power operation on a domain."""

    ON = "on"
    OFF = "off"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    SOFT_REBOOT = "soft-reboot"
    HARD_REBOOT = "hard-reboot"


# action -> (power states it may start from, power state it leads to)
ON, OFF, PAUSED, CRASHED = PowerState.ON, PowerState.OFF, PowerState.PAUSED, PowerState.CRASHED
POWER_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    PowerAction.ON: (frozenset({OFF, CRASHED}), ON),
    PowerAction.OFF: (frozenset({ON, PAUSED, CRASHED}), OFF),
    PowerAction.PAUSE: (frozenset({ON}), PAUSED),
    PowerAction.UNPAUSE: (frozenset({PAUSED}), ON),
    PowerAction.SOFT_REBOOT: (frozenset({ON}), ON),
    PowerAction.HARD_REBOOT: (frozenset({ON, PAUSED, CRASHED}), ON),
}
# A domain in one of these is not running (its guest agent link is dropped).
STOPPED = frozenset({OFF, CRASHED})

POWER_ACTIONS: tuple[str, ...] = tuple(POWER_TRANSITIONS)


def target_of(action: str, current: str) -> str | None:
    """The power state ``action`` leads to from ``current``, or None if refused."""
    allowed, target = POWER_TRANSITIONS[action]
    return target if current in allowed else None
