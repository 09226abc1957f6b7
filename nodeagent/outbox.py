"""The node agent's outbox: every part sends its reports here, the control stream drains it.

Parts (the executor's events, guest agent states, exec output, console
relays, observations, usage) call ``send``; while the stream is connected it
has attached a queue and drains it, in order. While disconnected reports are
dropped: the inventory sent on the next connect covers what they said. The
queue holds at most ``limit`` reports; ``backlog`` is how many wait (0 while
disconnected), so a chatty part (a console) can wait for the stream.
"""

from __future__ import annotations

import asyncio

from common.nodewire.messages import Report

OUTBOX_LIMIT = 100_000


class Outbox:
    """Reports waiting for the control stream."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._queue: asyncio.Queue[Report] | None = None

    def send(self, report: Report) -> None:
        """Queue a report; dropped while disconnected or when the queue is full."""
        queue = self._queue
        if queue is not None and queue.qsize() < self.limit:
            queue.put_nowait(report)

    def backlog(self) -> int:
        """Reports waiting to be sent (0 while disconnected)."""
        queue = self._queue
        return queue.qsize() if queue is not None else 0

    @property
    def attached(self) -> bool:
        """Whether a connected stream drains the outbox."""
        return self._queue is not None

    def attach(self, queue: asyncio.Queue[Report]) -> None:
        """A stream connected: reports go into its queue from now on."""
        self._queue = queue

    def detach(self) -> None:
        """The stream is gone: drop reports until the next attach."""
        self._queue = None
