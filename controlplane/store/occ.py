"""Optimistic concurrency: re-run a read-decide-commit step when its commit loses a race.

Every compare-and-set in the control plane goes through these helpers:

- ``retry_on_conflict(attempt, what)`` runs ``attempt`` (which reads, decides
  and commits with expectations) until it returns without raising the store's
  ``Conflict``. Any other exception passes straight through.
- ``update(read, mutate, write, what)`` is the read-modify-write form: read
  the current value, compute the new one, write old -> new (raising
  ``Conflict`` when old is stale). When mutate changes nothing, nothing is
  written and the current value is returned.
- ``first_then(value, read)`` is a reader that hands out a caller's
  just-read copy first and reads afresh after that (a stale copy costs one
  retry).

After ``ATTEMPTS`` conflicts in a row the helpers give up with ``Busy``
("<what> is changing too fast; try again"), a retryable FailedPrecondition:
FAILED_PRECONDITION over gRPC, 409 over REST. Attempts do not sleep: a
conflict means somebody else's commit succeeded, so the next try usually wins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from controlplane.errors import Busy
from controlplane.store.protocol import Conflict

T = TypeVar("T")
S = TypeVar("S")

# How many times a step is tried before Busy. High enough for dozens of
# writers racing on one record (tests/component/test_metadata.py runs 30).
ATTEMPTS = 50


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]], what: str, attempts: int = ATTEMPTS
) -> T:
    """The result of the first run of attempt that does not raise Conflict (else Busy)."""
    for _ in range(attempts):
        try:
            return await attempt()
        except Conflict:
            continue
    raise Busy(f"{what} is changing too fast; try again")


async def update(
    read: Callable[[], Awaitable[S]],
    mutate: Callable[[S], S],
    write: Callable[[S, S], Awaitable[S]],
    what: str,
    attempts: int = ATTEMPTS,
) -> S:
    """Read, mutate and write a value until the write wins; the stored value.

    read raises (NotFound, ...) when there is nothing to change; mutate may
    raise to refuse the change; write(old, new) commits with a compare-and-set
    on old and returns what it stored. An unchanged value is returned as read.
    """

    async def attempt() -> S:
        current = await read()
        new = mutate(current)
        if new == current:
            return current
        return await write(current, new)

    return await retry_on_conflict(attempt, what, attempts)


def first_then(
    value: S | None, read: Callable[[], Awaitable[S | None]]
) -> Callable[[], Awaitable[S | None]]:
    """A reader returning value (if not None) on its first call, then read()."""
    pending = [value] if value is not None else []

    async def reader() -> S | None:
        if pending:
            return pending.pop()
        return await read()

    return reader
