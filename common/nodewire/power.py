"""The power-action table: which power states each action may start from, and where it leads.

One table for both sides: the control plane's lifecycle refuses the same
actions the node's hypervisor drivers refuse.
"""

from __future__ import annotations

from enum import StrEnum


class PowerAction(StrEnum):
    """A power operation on a domain."""

    ON = "on"
    OFF = "off"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    SOFT_REBOOT = "soft-reboot"
    HARD_REBOOT = "hard-reboot"


# action -> (power states it may start from, power state it leads to)
POWER_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    PowerAction.ON: (frozenset({"off", "crashed"}), "on"),
    PowerAction.OFF: (frozenset({"on", "paused", "crashed"}), "off"),
    PowerAction.PAUSE: (frozenset({"on"}), "paused"),
    PowerAction.UNPAUSE: (frozenset({"paused"}), "on"),
    PowerAction.SOFT_REBOOT: (frozenset({"on"}), "on"),
    PowerAction.HARD_REBOOT: (frozenset({"on", "paused", "crashed"}), "on"),
}

POWER_ACTIONS: tuple[str, ...] = tuple(POWER_TRANSITIONS)


def target_of(action: str, current: str) -> str | None:
    """The power state ``action`` leads to from ``current``, or None if refused."""
    allowed, target = POWER_TRANSITIONS[action]
    return target if current in allowed else None
