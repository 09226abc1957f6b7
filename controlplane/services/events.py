"""Event retention: a background task that prunes each event type past its age limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from controlplane.model import Event
from controlplane.retention import cutoffs
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

SYSTEM = "system"


class EventPruner:
    """Removes old events per type, and records a ``prune`` event saying how many."""

    def __init__(
        self,
        records: Records,
        retention_days: Mapping[str, float],
        interval: float,
        clock: Callable[[], float],
        fqdn: str,
    ) -> None:
        self.records = records
        self.retention_days = dict(retention_days)
        self.interval = interval
        self.clock = clock
        self.fqdn = fqdn

    async def prune_once(self) -> dict[str, int]:
        """Prune every event type once; returns how many of each were removed."""
        await self.records.index_old_events()
        now = self.clock()
        removed = {
            kind: await self.records.prune_events(kind, before)
            for kind, before in cutoffs(now, self.retention_days).items()
        }
        removed = {kind: count for kind, count in removed.items() if count}
        if removed:
            total = sum(removed.values())
            event = Event(
                self.fqdn, "prune", f"pruned {total} old events", now, self.fqdn, extra=removed
            )
            await self.records.add_events(SYSTEM, [event])
            log.info("pruned old events", removed=removed)
        return removed

    async def run(self) -> None:
        """Prune now and then every interval, until cancelled."""
        while True:
            try:
                await self.prune_once()
            except Exception:
                log.exception("event pruning failed; trying again next interval")
            await asyncio.sleep(self.interval)
