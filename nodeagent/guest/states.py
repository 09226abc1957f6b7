"""What a guest's answer to is-system-running means as an agent state.

The states themselves are on the wire (``common.nodewire.agentstate``), since
the control plane reads them too.
"""

from __future__ import annotations

from common.nodewire.agentstate import AgentState, not_ready


def system_agent_state(system: str) -> str:
    """Shaken Fist's agent_state for what is-system-running said."""
    if system == "running":
        return AgentState.READY
    if system == "degraded":
        return AgentState.READY_DEGRADED
    return not_ready(system)
