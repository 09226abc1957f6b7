"""A guest agent's state as the node reports it: Shaken Fist's ``agent_state`` strings, once.

The node agent reports them (``AgentStatus``); the control plane stores
them and runs queued agent operations once an instance's agent is ready.
Besides the fixed states, a guest whose system is still coming up reports
"not ready (<its systemd state>)", so readiness is a prefix test.
"""

from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    """The fixed agent states (each compares equal to its string)."""

    READY = "ready"
    READY_DEGRADED = "ready (degraded)"
    NO_CONTACT = "not ready (no contact)"
    UNRESPONSIVE = "not ready (unresponsive)"
    POWERED_OFF = "not ready (instance powered off)"


def not_ready(system: str) -> str:
    """The state of a guest whose system says ``system`` (e.g. "starting")."""
    return f"not ready ({system})"


def is_ready(agent_state: str) -> bool:
    """Whether agent operations may run in a guest with this state."""
    return agent_state.startswith(AgentState.READY.value)
