"""The names of an instance's side channels that mean the in-guest agent.

An instance created with ``sf-agent`` gets the virtio-serial port the
in-guest agent speaks on. Shaken Fist 0.8 calls its newer agent's channel
``sf-agent2`` and its client's ``await_agent_*`` helpers test for that name,
so ``sf-agent2`` is accepted on create as the same channel, and an instance
with the channel lists both names to REST clients.
"""

from __future__ import annotations

from collections.abc import Iterable

AGENT_CHANNEL = "sf-agent"
AGENT_CHANNEL_V2 = "sf-agent2"


def normalized(names: Iterable[str]) -> tuple[str, ...]:
    """Names as stored: ``sf-agent2`` becomes ``sf-agent``, each name once, in order."""
    out: list[str] = []
    for name in names:
        name = AGENT_CHANNEL if name == AGENT_CHANNEL_V2 else name
        if name not in out:
            out.append(name)
    return tuple(out)


def advertised(names: Iterable[str]) -> list[str]:
    """Names as REST clients see them: ``sf-agent2`` beside ``sf-agent``."""
    out = list(names)
    if AGENT_CHANNEL in out and AGENT_CHANNEL_V2 not in out:
        out.append(AGENT_CHANNEL_V2)
    return out
