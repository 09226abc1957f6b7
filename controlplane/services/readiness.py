"""Whether the control plane can serve: its store answers, within a deadline.

``Readiness.run`` probes the store every ``interval`` seconds with one read
that must finish within ``timeout``; each time the answer changes it calls
``on_change(ready)`` (the composition root sets the gRPC health service's
statuses: SERVING or NOT_SERVING) and logs it. A store that raises, or hangs
past the timeout, is not ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from controlplane.store.protocol import Store

log = structlog.get_logger(__name__)

PROBE_KEY = b"health/probe"


class Readiness:
    """Probes the store and reports when it starts or stops answering."""

    def __init__(
        self,
        store: Store,
        on_change: Callable[[bool], Awaitable[None]],
        interval: float,
        timeout: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.sleep = sleep
        # As the server starts: serving.
        self.ready = True

    async def check(self) -> bool:
        """Whether one read of the store finishes, without error, within the timeout."""
        try:
            await asyncio.wait_for(self.store.get(PROBE_KEY), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store that fails in any way is not ready
            log.warning("store not answering", error=str(exc) or type(exc).__name__)
            return False
        return True

    async def run(self) -> None:
        """Probe forever, telling on_change about every change."""
        while True:
            ready = await self.check()
            if ready != self.ready:
                self.ready = ready
                log.warning("store answers again" if ready else "not serving: store down")
                await self.on_change(ready)
            await self.sleep(self.interval)
