"""Forwards hypervisor power-state changes to the control plane as observations."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from nodeagent.hypervisor.protocol import Hypervisor
from nodeagent.messages import Observation

log = structlog.get_logger(__name__)


async def observe(hypervisor: Hypervisor, send: Callable[[Observation], None]) -> None:
    """Until the hypervisor closes, send an Observation for each domain event."""
    async for state in hypervisor.events():
        log.info(
            "domain changed", uuid=state.uuid, power_state=state.power_state, reason=state.reason
        )
        send(Observation(state.uuid, True, state.power_state, state.reason))
