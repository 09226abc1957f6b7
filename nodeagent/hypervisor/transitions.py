"""Which power actions each domain power state allows, and where they lead.

Shared by every hypervisor driver so that they refuse the same things.
"""

from __future__ import annotations

# action -> (power states it may start from, power state it leads to)
POWER_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "on": (frozenset({"off", "crashed"}), "on"),
    "off": (frozenset({"on", "paused", "crashed"}), "off"),
    "pause": (frozenset({"on"}), "paused"),
    "unpause": (frozenset({"paused"}), "on"),
    "soft-reboot": (frozenset({"on"}), "on"),
    "hard-reboot": (frozenset({"on", "paused", "crashed"}), "on"),
}


def target_of(action: str, current: str) -> str | None:
    """The power state ``action`` leads to from ``current``, or None if refused."""
    allowed, target = POWER_TRANSITIONS[action]
    return target if current in allowed else None
