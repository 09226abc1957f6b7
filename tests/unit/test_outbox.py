"""The node agent's outbox: reports reach an attached stream's queue, up to a limit, else drop."""

from __future__ import annotations

import asyncio

from common.nodewire.messages import NodeEvent, Report
from nodeagent.outbox import Outbox


def event(n: int) -> NodeEvent:
    """The n-th event of one instance."""
    return NodeEvent("i-1", f"event {n}")


def test_reports_are_dropped_while_no_stream_is_attached() -> None:
    """Before attach and after detach, send drops the report and the backlog is 0."""
    outbox = Outbox()
    outbox.send(event(1))
    assert outbox.backlog() == 0 and not outbox.attached
    queue: asyncio.Queue[Report] = asyncio.Queue()
    outbox.attach(queue)
    outbox.send(event(2))
    outbox.detach()
    outbox.send(event(3))
    assert queue.qsize() == 1 and queue.get_nowait() == event(2)
    assert outbox.backlog() == 0


def test_an_attached_queue_holds_at_most_the_limit_in_order() -> None:
    """Reports beyond the limit are dropped; the backlog counts what waits."""
    outbox = Outbox(limit=3)
    queue: asyncio.Queue[Report] = asyncio.Queue()
    outbox.attach(queue)
    for n in range(5):
        outbox.send(event(n))
    assert outbox.backlog() == 3
    assert [queue.get_nowait() for _ in range(3)] == [event(0), event(1), event(2)]
