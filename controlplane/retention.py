"""Event types and how long each is kept: pure data and checks, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.errors import InvalidArgument

DAY = 86400.0

# Shaken Fist's event types, with the default number of days each is kept.
DEFAULT_RETENTION_DAYS: Mapping[str, float] = {
    "audit": 90,
    "mutate": 90,
    "status": 7,
    "usage": 30,
    "resources": 7,
    "prune": 30,
    "historic": 90,
}
EVENT_TYPES = tuple(DEFAULT_RETENTION_DAYS)


def check_event_type(event_type: str) -> str:
    """An event type filter: empty (all) or a known type, else InvalidArgument."""
    if event_type and event_type not in DEFAULT_RETENTION_DAYS:
        raise InvalidArgument(
            f"unknown event type {event_type!r}; known types: {', '.join(EVENT_TYPES)}"
        )
    return event_type


def cutoffs(now: float, retention_days: Mapping[str, float]) -> dict[str, float]:
    """Per event type, the timestamp before which its events are pruned (0 days: never)."""
    return {kind: now - days * DAY for kind, days in retention_days.items() if days > 0}
