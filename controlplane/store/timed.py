"""A store that times every operation: the port wrapped for the ``minicloud_store_*`` metrics.

Conflicts and failures are counted by the exception's class name. Watches
and leases pass through untimed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from controlplane.metrics import PlaneMetrics
from controlplane.store.protocol import Coordinated, Item, Op, Watch


class TimedStore:
    """Passes every call to the store it wraps, observing how long get, scan and commit take."""

    def __init__(self, inner: Coordinated, metrics: PlaneMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def get(self, key: bytes) -> Item | None:
        with self._timed("get"):
            return await self.inner.get(key)

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        with self._timed("scan"):
            return await self.inner.scan(prefix, reverse=reverse, limit=limit, after=after)

    async def commit(self, ops: Sequence[Op]) -> None:
        with self._timed("commit"):
            await self.inner.commit(ops)

    async def close(self) -> None:
        await self.inner.close()

    def watch(self, prefix: bytes) -> Watch:
        return self.inner.watch(prefix)

    async def grant(self, ttl: float) -> int:
        return await self.inner.grant(ttl)

    async def keep_alive(self, lease: int) -> None:
        await self.inner.keep_alive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.metrics.store_errors.inc(operation=operation, error=type(exc).__name__)
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.store_duration.observe(elapsed, operation=operation)
