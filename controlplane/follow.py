"""Following a prefix of a coordinated store: read it whole, then apply each change.

``follow`` watches a prefix, then scans it (so nothing committed between the
two is missed; a change seen twice must be harmless to ``apply``), hands the
scan to ``reset`` and every later batch of changes to ``apply``, until
cancelled. A lost watch (or a store error) starts over after ``retry``
seconds: read again, watch again. A store that cannot watch (an adapter
without watches yet) is not followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from controlplane.store.protocol import Change, Coordinated, Item, StoreError

log = structlog.get_logger(__name__)

RETRY = 0.5


async def follow(
    store: Coordinated,
    prefix: bytes,
    reset: Callable[[list[Item]], None],
    apply: Callable[[list[Change]], None],
    retry: float = RETRY,
) -> None:
    """Keep reset/apply in step with what the store holds under prefix, until cancelled."""
    while True:
        try:
            async with store.watch(prefix) as changes:
                reset(await store.scan(prefix))
                async for batch in changes:
                    apply(batch)
        except StoreError as exc:
            log.info("watch ended; reading again", prefix=prefix.decode(), error=str(exc))
        except Exception:
            log.exception("following the store failed; reading again", prefix=prefix.decode())
        await asyncio.sleep(retry)
