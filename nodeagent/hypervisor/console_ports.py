"""The TCP ports a domain's consoles listen on: chosen per node from 30000-50000, never twice.

A port is taken when one of this node's domains already names it (its XML
is the record, so choices survive node-agent restarts) or when something on
the host is bound to it (checked by trying to bind it).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from nodeagent.errors import NodeAgentError

PORT_MIN = 30000
PORT_MAX = 50000


@dataclass(frozen=True)
class ConsolePorts:
    """The TCP ports of one domain's consoles; 0 means none."""

    console_port: int = 0
    vdi_port: int = 0
    vdi_tls_port: int = 0

    def ports(self) -> list[int]:
        """The ports in use (non-zero)."""
        return [p for p in (self.console_port, self.vdi_port, self.vdi_tls_port) if p]


class NoFreePort(NodeAgentError):
    """Every port in the range is taken."""


def bindable(host: str) -> Callable[[int], bool]:
    """A check that a TCP port on host can be bound right now."""

    def check(port: int) -> bool:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
        return True

    return check


def pick_ports(
    count: int,
    taken: Iterable[int],
    is_free: Callable[[int], bool],
    rng: random.Random | None = None,
    low: int = PORT_MIN,
    high: int = PORT_MAX,
) -> list[int]:
    """``count`` distinct ports in [low, high] that are neither taken nor busy on the host."""
    rng = rng or random.Random()
    used = set(taken)
    chosen: list[int] = []
    for port in _candidates(rng, low, high):
        if len(chosen) == count:
            break
        if port in used or not is_free(port):
            continue
        chosen.append(port)
        used.add(port)
    if len(chosen) < count:
        raise NoFreePort(f"no free console port left in {low}-{high}")
    return chosen


def _candidates(rng: random.Random, low: int, high: int) -> Iterator[int]:
    """Random probes first (cheap while most ports are free), then every port, shuffled."""
    for _ in range(64):
        yield rng.randint(low, high)
    sweep = list(range(low, high + 1))
    rng.shuffle(sweep)
    yield from sweep
