"""The background task owner: spawned tasks run until stop cancels and awaits every one."""

from __future__ import annotations

import asyncio

from common.tasks import Tasks


async def test_stop_cancels_and_awaits_every_task() -> None:
    """stop ends sleeping tasks, including ones spawned by other tasks, and waits for them."""
    tasks = Tasks()
    ended: list[str] = []

    async def sleeper(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(name)

    async def parent() -> None:
        tasks.spawn(sleeper("child"))
        await sleeper("parent")

    tasks.spawn(parent())
    tasks.spawn(sleeper("other"))
    await asyncio.sleep(0.01)
    assert len(tasks) == 3
    await tasks.stop()
    assert len(tasks) == 0 and sorted(ended) == ["child", "other", "parent"]


async def test_finished_tasks_leave_the_owner() -> None:
    """A task that ends, normally or by failing, is no longer held."""
    tasks = Tasks()

    async def fail() -> None:
        raise RuntimeError("boom")

    tasks.spawn(asyncio.sleep(0))
    tasks.spawn(fail(), name="failing")
    await asyncio.sleep(0.01)
    assert len(tasks) == 0


async def test_spawn_after_stop_runs_nothing() -> None:
    """Once stopped, the owner closes new coroutines unrun."""
    tasks = Tasks()
    await tasks.stop()
    ran = []

    async def work() -> None:
        ran.append(1)

    tasks.spawn(work())
    await asyncio.sleep(0.01)
    assert ran == [] and len(tasks) == 0
