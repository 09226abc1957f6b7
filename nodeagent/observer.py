"""Forwards hypervisor power-state changes to the control plane as observations."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from common.nodewire.messages import Observation
from common.nodewire.power import STOPPED, PowerState
from nodeagent.guest.watch import GuestWatch
from nodeagent.hypervisor.protocol import Hypervisor

log = structlog.get_logger(__name__)


async def observe(
    hypervisor: Hypervisor,
    send: Callable[[Observation], None],
    guestwatch: GuestWatch | None = None,
) -> None:
    """Until the hypervisor closes, send an Observation for each domain event.

    Guest agent links follow: a domain that runs gets one (if it has the
    channel), a domain that stops loses it.
    """
    async for state in hypervisor.events():
        log.info(
            "domain changed", uuid=state.uuid, power_state=state.power_state, reason=state.reason
        )
        send(Observation(state.uuid, True, state.power_state, state.reason))
        if guestwatch is not None:
            if state.power_state == PowerState.ON:
                guestwatch.domain_on(state.uuid)
            elif state.power_state in STOPPED:
                guestwatch.domain_off(state.uuid)
