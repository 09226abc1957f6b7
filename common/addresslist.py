"""A list of control-plane addresses and which one is current: what every dialler fails over by.

Every process that dials a control plane (the node agent, the REST gateway,
the ``minicloud`` CLI and ``client/api.py``) takes its address setting as a
comma-separated list (``parse``); one address is exactly the behaviour of
before. A dialler starts at the first address and stays on whichever answers
(``current``) until it fails; then ``failed`` moves it to the next one, round
the list. One call tries each address at most once (``rotation``), waiting
``delay(n)`` before the n-th move, then gives up with the last error.

Pure: no gRPC, no clock, no randomness (the caller sleeps).
"""

from __future__ import annotations

from collections.abc import Iterator

# Waits before the 1st, 2nd, ... move to another address within one call, in seconds.
MOVE_BASE = 0.1
MOVE_CAP = 1.0


def parse(text: str, what: str = "the control plane address") -> tuple[str, ...]:
    """The addresses of a comma-separated setting (ValueError when it names none, or
    names one twice)."""
    found = tuple(part.strip() for part in text.split(","))
    if not found or any(not part for part in found):
        raise ValueError(f"{what} must be HOST:PORT or a comma-separated list of them: {text!r}")
    if len(set(found)) != len(found):
        raise ValueError(f"{what} names an address twice: {text!r}")
    return found


def delay(moves: int) -> float:
    """Seconds to wait before the moves-th move to another address within one call (0 for
    the first try)."""
    if moves <= 0:
        return 0.0
    return float(min(MOVE_CAP, MOVE_BASE * 2 ** (moves - 1)))


class AddressList:
    """Addresses in the operator's order and the one diallers use now."""

    def __init__(self, addresses: str | tuple[str, ...] | list[str]) -> None:
        found = parse(addresses) if isinstance(addresses, str) else tuple(addresses)
        if not found:
            raise ValueError("no control plane address")
        self.addresses: tuple[str, ...] = found
        self._current = 0

    @property
    def current(self) -> str:
        """The address to dial now."""
        return self.addresses[self._current]

    @property
    def single(self) -> bool:
        """Whether there is only one address (nothing to fail over to)."""
        return len(self.addresses) == 1

    def failed(self, address: str) -> str:
        """address did not answer: move past it (if it is still current); the new current."""
        if address == self.current:
            self._current = (self._current + 1) % len(self.addresses)
        return self.current

    def rotation(self) -> Iterator[str]:
        """Each address once, from the current one on (what one call may try)."""
        start = self._current
        for step in range(len(self.addresses)):
            yield self.addresses[(start + step) % len(self.addresses)]

    def __str__(self) -> str:
        return ",".join(self.addresses)
