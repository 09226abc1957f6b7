"""Event retention: a background task that prunes each event type past its age limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from controlplane.errors import InvalidArgument
from controlplane.model import Event
from controlplane.retention import check_event_type, cutoffs
from controlplane.services.namespaces import SYSTEM
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

MAX_EVENTS = 10000


async def read_events(records: Records, uuid: str, event_type: str, limit: int) -> list[Event]:
    """An object's events, newest first: of one type (or all), at most limit (0: 100)."""
    if limit < 0 or limit > MAX_EVENTS:
        raise InvalidArgument(f"limit must be between 0 and {MAX_EVENTS}")
    check_event_type(event_type)
    return await records.events(uuid, event_type, limit or 100)


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
