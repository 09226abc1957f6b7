"""An in-memory network driver that honours the same contract as the Linux adapter.

It checks configs exactly as the Linux adapter does and records the last one
ensured per network. ``fail_next`` makes the next ensure or remove raise, for
tests of what callers do when the data plane fails.
"""

from __future__ import annotations

from nodeagent.network.naming import Names, check_prefix
from nodeagent.network.protocol import NetworkConfig, NetworkError
from nodeagent.network.validation import check, check_uuid


class FakeNetworkDriver:
    """Networks as dictionary entries."""

    def __init__(self, name_prefix: str = "mc") -> None:
        self.prefix = check_prefix(name_prefix)
        self.networks: dict[str, NetworkConfig] = {}
        self.ensure_calls = 0
        self.remove_calls = 0
        self._failure: NetworkError | None = None
        self.cluster_id = ""

    def fail_next(self, error: NetworkError) -> None:
        """Make the next ensure or remove raise this error (and change nothing)."""
        self._failure = error

    def _raise_injected(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def bridge_name(self, network_uuid: str) -> str:
        return Names.of(self.prefix, network_uuid).bridge

    async def ensure(self, config: NetworkConfig) -> None:
        check(config)
        self.ensure_calls += 1
        self._raise_injected()
        self.networks[config.uuid] = config

    async def remove(self, network_uuid: str) -> None:
        check_uuid(network_uuid)
        self.remove_calls += 1
        self._raise_injected()
        self.networks.pop(network_uuid, None)

    async def present(self) -> list[str]:
        return sorted(self.networks)

    def claim(self, cluster_id: str) -> None:
        if cluster_id:
            self.cluster_id = cluster_id
