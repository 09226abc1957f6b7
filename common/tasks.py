"""The one owner of a process's background tasks: each is started through it, all stop together.

``spawn`` starts a coroutine as a task and keeps it until it ends; a task
that fails is logged (nobody awaits a background task). ``stop`` cancels
every task still running and waits for them; from then on ``spawn``
refuses new work (the coroutine is closed unrun), so shutdown leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Tasks:
    """Background tasks started through one owner, stopped together."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()
        self._stopped = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Run coro in the background (closed unrun once the owner has stopped)."""
        if self._stopped:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._done)

    def __len__(self) -> int:
        """How many tasks are still running."""
        return len(self._running)

    async def stop(self) -> None:
        """Cancel every running task and wait until all have ended."""
        self._stopped = True
        while self._running:
            pending = list(self._running)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), exc_info=task.exception())
