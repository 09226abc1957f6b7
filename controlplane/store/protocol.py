"""The key-value store port every state-keeping piece of the control plane uses.

Semantics every implementation honours (tests/contract/test_store_contract.py):

- Keys and values are bytes. Every key carries a version: 1 when first
  written, +1 on every later write. A missing key has version 0.
- ``commit`` applies a batch of puts and deletes atomically. An operation
  with ``expect`` set is a compare-and-set: the whole batch is refused with
  ``Conflict`` (retryable) unless the key's current version equals it
  (0 meaning "must not exist"). Nothing of a refused batch is applied.
- A batch holds at most ``MAX_BATCH`` operations and names each key at most
  once (etcd refuses a transaction over ``--max-txn-ops``, 128 by default, and
  one that writes a key twice); any other batch is refused with
  ``InvalidBatch`` before anything is applied. Callers with more to write
  commit in chunks (``chunks``), where atomicity across chunks is not needed.
- ``commit`` returns only once the batch is durable: after a crash (of the
  process or the machine) every acknowledged commit is there.
- ``scan`` returns the items whose keys start with ``prefix`` in key order
  (or reverse order), at most ``limit`` of them. With ``after`` set, only
  keys past it in the scan's direction: greater than ``after`` going
  forward, smaller going in reverse (``after`` itself is never returned and
  need not exist), so a scan resumes from the last key of the previous one.
- What was committed survives ``close`` and reopening the same location.

Coordination (``Coordinated``; tests/contract/test_coordination_contract.py),
for several control planes on one store:

- ``watch(prefix)``: once its block is entered, every change committed under
  prefix afterwards is yielded, one list per commit (that commit's keys under
  prefix, a deleted key's item None), in commit order. A watch that cannot
  go on without a gap raises ``WatchLost``: re-read and watch again.
- ``grant(ttl)`` makes a lease; a ``Put`` naming it ties its key to it. When
  the lease ends (``revoke``, or ``ttl`` seconds without ``keep_alive``),
  every key still tied to it is deleted, and watchers see the deletes. A
  later ``Put`` of the key without the lease unties it. ``keep_alive`` of an
  ended lease, and a batch putting a key under one, raise ``LeaseExpired``.

docs/stores.md says what each adapter promises beyond this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

# The most operations one batch may hold (etcd's default --max-txn-ops).
MAX_BATCH = 128


class StoreError(Exception):
    """The store failed; ``retryable`` says whether trying again makes sense."""

    retryable = False


class Conflict(StoreError):
    """A compare-and-set expectation did not hold; read again and retry."""

    retryable = True


class StoreUnavailable(StoreError):
    """The store could not be reached, or did not answer in time; a commit's outcome is unknown."""

    retryable = True


class InvalidBatch(StoreError):
    """A batch the store cannot take: over MAX_BATCH operations, or a key named twice."""


class WatchLost(StoreError):
    """A watch cannot go on without missing changes; re-read what is needed and watch again."""

    retryable = True


class LeaseExpired(StoreError):
    """The lease has ended (revoked, or its ttl passed without a keep-alive)."""


@dataclass(frozen=True)
class Item:
    """A stored value with its key and version."""

    key: bytes
    value: bytes
    version: int


@dataclass(frozen=True)
class Put:
    """Write ``value`` at ``key``; if ``expect`` is set, only at that version.

    With ``lease`` (a ``Coordinated.grant`` id) the key is deleted when that
    lease ends; 0 ties it to none.
    """

    key: bytes
    value: bytes
    expect: int | None = None
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Remove ``key``; if ``expect`` is set, only at that version."""

    key: bytes
    expect: int | None = None


Op = Put | Delete


class Store(Protocol):
    """A versioned, ordered key-value store with atomic batches."""

    async def get(self, key: bytes) -> Item | None:
        """The item at key, or None."""
        ...

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        """Items under prefix in key order (or reversed), past ``after`` if set, at most limit."""
        ...

    async def commit(self, ops: Sequence[Op]) -> None:
        """Apply every op or none (Conflict when an expectation fails)."""
        ...

    async def close(self) -> None:
        """Flush and release the store."""
        ...


@dataclass(frozen=True)
class Change:
    """One committed change to a watched key: its new item, or None when it was deleted."""

    key: bytes
    item: Item | None


class Watch(Protocol):
    """``async with store.watch(prefix) as changes: async for batch in changes: ...``"""

    async def __aenter__(self) -> AsyncIterator[list[Change]]: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Coordinated(Store, Protocol):
    """A store several control planes can coordinate through: watches and leases."""

    def watch(self, prefix: bytes) -> Watch:
        """Changes committed under prefix once the watch is entered, one list per commit."""
        ...

    async def grant(self, ttl: float) -> int:
        """A new lease (an id > 0) that lasts ttl seconds unless kept alive."""
        ...

    async def keep_alive(self, lease: int) -> None:
        """Renew a lease for another ttl (LeaseExpired if it has ended)."""
        ...

    async def revoke(self, lease: int) -> None:
        """End a lease now, deleting its keys (no error if it has already ended)."""
        ...


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix (None: no such key)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def check_batch(ops: Sequence[Op]) -> None:
    """Refuse (InvalidBatch) a batch over MAX_BATCH operations or naming a key twice."""
    if len(ops) > MAX_BATCH:
        raise InvalidBatch(f"a batch holds at most {MAX_BATCH} operations, not {len(ops)}")
    seen: set[bytes] = set()
    for op in ops:
        if op.key in seen:
            raise InvalidBatch(f"a batch names each key once; {op.key!r} is named twice")
        seen.add(op.key)


def chunks(ops: Sequence[Op], size: int = MAX_BATCH) -> Iterator[list[Op]]:
    """ops cut into batches of at most size (each committed on its own)."""
    for start in range(0, len(ops), size):
        yield list(ops[start : start + size])
