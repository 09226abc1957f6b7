"""Whether the node agent can do its work: what its ``/readyz`` answers.

Ready means both ends answer: the stream to the control plane is up and the
hypervisor answers a listing of its domains within ``timeout`` seconds.
``check`` returns "" when ready, otherwise the reason (the 503's body).
"""

from __future__ import annotations

import asyncio

from nodeagent.hypervisor.protocol import Hypervisor


class Readiness:
    """Checks the control-plane stream and the hypervisor on each call."""

    def __init__(
        self, hypervisor: Hypervisor, stream_up: asyncio.Event, timeout: float = 5.0
    ) -> None:
        self.hypervisor = hypervisor
        self.stream_up = stream_up
        self.timeout = timeout

    async def check(self) -> str:
        """ "" when ready; else why not."""
        if not self.stream_up.is_set():
            return "the stream to the control plane is down"
        try:
            await asyncio.wait_for(self.hypervisor.list_domains(), self.timeout)
        except TimeoutError:
            return f"the hypervisor ({self.hypervisor.kind}) did not answer in {self.timeout:g} s"
        except Exception as exc:
            return f"the hypervisor ({self.hypervisor.kind}) does not answer: {exc}"
        return ""
