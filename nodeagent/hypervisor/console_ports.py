"""The TCP ports a domain's consoles listen on: chosen per node from 30000-50000, never twice.

A port is taken when one of this node's domains already names it (its XML
is the record, so choices survive node-agent restarts) or when something on
the host is bound to it (checked by trying to bind it).

The VNC or SPICE display also has a password (``vdi_password``), made anew
each time the domain is started (``new_password``). VNC uses at most 8
characters of it (its DES challenge), so a VNC password is 8 characters long;
SPICE takes longer ones.
"""

from __future__ import annotations

import random
import secrets
import socket
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from nodeagent.errors import NodeAgentError

PORT_MIN = 30000
PORT_MAX = 50000


@dataclass(frozen=True)
class ConsolePorts:
    """The TCP ports of one domain's consoles (0 means none) and its display's password."""

    console_port: int = 0
    vdi_port: int = 0
    vdi_tls_port: int = 0
    # "" when the display has none (a domain defined before passwords, or never started).
    vdi_password: str = field(default="", repr=False)

    def ports(self) -> list[int]:
        """The ports in use (non-zero)."""
        return [p for p in (self.console_port, self.vdi_port, self.vdi_tls_port) if p]


VNC_PASSWORD_LENGTH = 8
SPICE_PASSWORD_LENGTH = 20
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def new_password(kind: str) -> str:
    """A random display password: 8 characters for ``vnc`` (all it uses), 20 for SPICE."""
    length = VNC_PASSWORD_LENGTH if kind == "vnc" else SPICE_PASSWORD_LENGTH
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


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
