"""A dialler's address list: parsed from one setting, current until it fails, each address
tried once per call."""

from __future__ import annotations

import pytest

from common.addresslist import MOVE_CAP, AddressList, delay, parse


def test_one_address_is_a_list_of_one() -> None:
    """The single-address setting of before is still valid, and nothing to move to."""
    found = AddressList("127.0.0.1:13100")
    assert found.addresses == ("127.0.0.1:13100",)
    assert found.single
    assert found.failed("127.0.0.1:13100") == "127.0.0.1:13100"


def test_a_comma_separated_setting_keeps_the_operators_order() -> None:
    """Spaces around entries are dropped; the first is current."""
    found = AddressList(" a:1, b:2 ,c:3")
    assert found.addresses == ("a:1", "b:2", "c:3")
    assert found.current == "a:1"
    assert str(found) == "a:1,b:2,c:3"


@pytest.mark.parametrize("text", ["", ",", "a:1,", "a:1,,b:2", "a:1,a:1"])
def test_empty_or_repeated_entries_are_refused(text: str) -> None:
    """A setting naming no address, an empty entry or one address twice is a ValueError."""
    with pytest.raises(ValueError, match="MINICLOUD_X"):
        parse(text, "MINICLOUD_X")


def test_a_failure_moves_to_the_next_address_round_the_list() -> None:
    """failed moves past the current address; a stale failure of another one is ignored."""
    found = AddressList("a:1,b:2,c:3")
    assert found.failed("a:1") == "b:2"
    assert found.failed("a:1") == "b:2"
    assert found.failed("b:2") == "c:3"
    assert found.failed("c:3") == "a:1"


def test_a_rotation_holds_each_address_once_from_the_current_one() -> None:
    """What one call may try: every address once, starting where the list stands."""
    found = AddressList("a:1,b:2,c:3")
    found.failed("a:1")
    assert list(found.rotation()) == ["b:2", "c:3", "a:1"]


def test_moves_wait_a_little_longer_each_time_up_to_a_cap() -> None:
    """No wait before the first try, then a growing, bounded one."""
    waits = [delay(n) for n in range(8)]
    assert waits[0] == 0
    assert waits[1] > 0
    assert waits == sorted(waits)
    assert max(waits) == MOVE_CAP


def test_the_gateway_and_node_agent_settings_take_a_list() -> None:
    """MINICLOUD_GATEWAY_API and MINICLOUD_NODE_CONTROL_PLANE: one address as before, or
    several; a bad list stops the start with the setting's name."""
    from gateway.settings import GatewaySettings
    from nodeagent.settings import Settings as NodeSettings

    gateway = {"MINICLOUD_GATEWAY_PLAINTEXT": "1"}
    node = {"MINICLOUD_NODE_PLAINTEXT": "1"}
    assert GatewaySettings.from_env(gateway).api == "127.0.0.1:13100"
    assert NodeSettings.from_env(node).control_plane == "127.0.0.1:13100"
    both = "10.0.0.5:13100, 10.0.0.6:13100"
    api = GatewaySettings.from_env({**gateway, "MINICLOUD_GATEWAY_API": both}).api
    assert api == "10.0.0.5:13100,10.0.0.6:13100"
    nodes = NodeSettings.from_env({**node, "MINICLOUD_NODE_CONTROL_PLANE": both})
    assert nodes.control_plane == "10.0.0.5:13100,10.0.0.6:13100"
    with pytest.raises(ValueError, match="MINICLOUD_GATEWAY_API"):
        GatewaySettings.from_env({**gateway, "MINICLOUD_GATEWAY_API": "a:1,"})
    with pytest.raises(ValueError, match="MINICLOUD_NODE_CONTROL_PLANE"):
        NodeSettings.from_env({**node, "MINICLOUD_NODE_CONTROL_PLANE": "a:1,a:1"})
