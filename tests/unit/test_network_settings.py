"""The Linux network driver's settings come from the node agent's MINICLOUD_NODE_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.network.linux import LinuxNetworkDriver, LinuxNetworkSettings
from nodeagent.network.protocol import NetworkError
from nodeagent.settings import Settings


def test_underlay_defaults_to_the_node_address_and_names_follow_the_prefix() -> None:
    """Without an underlay address the node's address is used; the prefix names the devices."""
    settings = Settings.from_env(
        {
            "MINICLOUD_NODE_ADDRESS": "10.1.1.1",
            "MINICLOUD_NODE_DATA_DIR": "/srv/node",
            "MINICLOUD_NODE_NETWORK_NAME_PREFIX": "ab",
            "MINICLOUD_NODE_NETWORK_UNDERLAY_NETNS": "under",
            "MINICLOUD_NODE_PLAINTEXT": "1",
        }
    )
    network = LinuxNetworkSettings.from_node(settings)
    assert network.underlay_address == "10.1.1.1"
    assert (network.data_dir, network.underlay_netns) == (Path("/srv/node"), "under")
    assert network.egress_bridge == "mcegress"
    driver = LinuxNetworkDriver(network)
    assert driver.bridge_name("6f1c2f0e-52b4-4a43-9d4e-0d1c2b3a4f50").startswith("abb-")
    explicit = Settings.from_env(
        {"MINICLOUD_NODE_NETWORK_UNDERLAY_ADDRESS": "10.2.2.2", "MINICLOUD_NODE_PLAINTEXT": "1"}
    )
    assert LinuxNetworkSettings.from_node(explicit).underlay_address == "10.2.2.2"


@pytest.mark.parametrize("prefix", ["", "toolong", "A1", "a-b"])
def test_a_prefix_that_would_make_bad_interface_names_is_refused(prefix: str) -> None:
    """Prefixes must be 1-4 lower-case letters or digits so names fit in 15 characters."""
    with pytest.raises(NetworkError):
        LinuxNetworkDriver(
            LinuxNetworkSettings(data_dir=Path("/x"), underlay_address="", name_prefix=prefix)
        )
