"""The agent channel's two names: sf-agent as stored, sf-agent2 as Shaken Fist 0.8 clients test."""

from __future__ import annotations

from common.sidechannels import advertised, normalized


def test_sf_agent2_on_create_is_the_agent_channel() -> None:
    """sf-agent2 is stored as sf-agent; other names are kept, each once, in order."""
    assert normalized(["sf-agent2"]) == ("sf-agent",)
    assert normalized(["x", "sf-agent", "sf-agent2", "x"]) == ("x", "sf-agent")
    assert normalized([]) == ()


def test_an_instance_with_the_agent_channel_lists_both_names() -> None:
    """REST clients see sf-agent2 beside sf-agent, and neither without the channel."""
    assert advertised(("sf-agent",)) == ["sf-agent", "sf-agent2"]
    assert advertised(("other",)) == ["other"]
    assert advertised(()) == []
