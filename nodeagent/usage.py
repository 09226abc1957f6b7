"""Usage events: every running instance's CPU, disk and network counters, periodically.

Each round asks the hypervisor for the counters of all running domains at
once and emits one ``usage`` event per instance, with Shaken Fist's
``extra`` shape ("cpu usage", "disk usage" by device, "network usage" by
MAC address). A failing round is logged and the next one runs as planned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from common.nodewire.messages import NodeEvent
from nodeagent.hypervisor.protocol import DomainUsage, Hypervisor, HypervisorError

log = structlog.get_logger(__name__)


def usage_extra(usage: DomainUsage) -> dict[str, Any]:
    """A usage event's ``extra``, keyed as Shaken Fist keys it."""
    return {
        "cpu usage": {
            "cpu time ns": usage.cpu_time_ns,
            "system time ns": usage.system_time_ns,
            "user time ns": usage.user_time_ns,
        },
        "disk usage": {
            name: {
                "actual bytes on disk": disk.actual_bytes,
                "errors": disk.errors,
                "read bytes": disk.read_bytes,
                "read requests": disk.read_requests,
                "write bytes": disk.write_bytes,
                "write requests": disk.write_requests,
            }
            for name, disk in usage.disks.items()
        },
        "network usage": {
            mac: {
                "read bytes": nic.read_bytes,
                "read drops": nic.read_drops,
                "read errors": nic.read_errors,
                "read packets": nic.read_packets,
                "write bytes": nic.write_bytes,
                "write drops": nic.write_drops,
                "write errors": nic.write_errors,
                "write packets": nic.write_packets,
            }
            for mac, nic in usage.nics.items()
        },
    }


async def report_once(
    hypervisor: Hypervisor, emit: Callable[[NodeEvent], None], clock: Callable[[], float]
) -> int:
    """Emit one usage event per running instance; returns how many."""
    usage = await hypervisor.usage()
    now = clock()
    for uuid, counters in usage.items():
        emit(NodeEvent(uuid, "usage", type="usage", timestamp=now, extra=usage_extra(counters)))
    return len(usage)


async def report_usage(
    hypervisor: Hypervisor,
    emit: Callable[[NodeEvent], None],
    interval: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Report usage every ``interval`` seconds, forever (0 or less: never)."""
    if interval <= 0:
        return
    while True:
        await sleep(interval)
        try:
            await report_once(hypervisor, emit, clock)
        except HypervisorError as exc:
            log.warning("usage round failed", error=str(exc))
        except Exception:
            log.exception("usage round crashed")
