"""A minimal in-memory network driver for component tests (until the data plane's fake lands)."""

from __future__ import annotations

from nodeagent.network.protocol import NetworkConfig


class MemoryNetworkDriver:
    """Networks as dictionary entries: what each ensure asked for, and every call."""

    def __init__(self) -> None:
        self.networks: dict[str, NetworkConfig] = {}
        self.calls: list[tuple[str, str]] = []

    def bridge_name(self, network_uuid: str) -> str:
        return f"mcbr-{network_uuid[:8]}"

    async def ensure(self, config: NetworkConfig) -> None:
        self.calls.append(("ensure", config.uuid))
        self.networks[config.uuid] = config

    async def remove(self, network_uuid: str) -> None:
        self.calls.append(("remove", network_uuid))
        self.networks.pop(network_uuid, None)

    async def present(self) -> list[str]:
        return sorted(self.networks)
