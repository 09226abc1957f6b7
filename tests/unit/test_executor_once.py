"""The node executor runs a command at most once by command id, however often it arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from common.nodewire.commands import AgentCommand, AgentExecute, CreateDomain
from common.nodewire.domain import DiskRequest, DomainRequest
from common.nodewire.messages import ExecResult
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.executor import Executor
from nodeagent.guest.ops import GuestOpError, GuestOps
from nodeagent.hypervisor.fake import FakeHypervisor

UUID = "0b6f3f6e-9a64-4b8e-a6c1-7d0d7c2b1f10"
SPEC = DomainRequest(uuid=UUID, name="vm", disks=(DiskRequest(size_gb=1, base="debian:11"),))


class CountingOps:
    """Guest operations that count their runs and finish when told."""

    def __init__(self, fail_retryable: bool = False) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.fail_retryable = fail_retryable

    async def run(self, command: AgentCommand) -> ExecResult:
        self.runs += 1
        await self.release.wait()
        if self.fail_retryable:
            raise GuestOpError("the instance's agent is not ready", retryable=True)
        return ExecResult(0, "hello\n", "")


class CountingHypervisor(FakeHypervisor):
    """A fake hypervisor counting the domains it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.defined = 0

    async def define_and_start(self, *args: Any, **kwargs: Any) -> Any:
        self.defined += 1
        return await super().define_and_start(*args, **kwargs)


def executor(tmp_path: Path, ops: CountingOps | None = None) -> tuple[Executor, CountingHypervisor]:
    """An executor on a counting fake hypervisor (with ops as its guest operations)."""
    hypervisor = CountingHypervisor()
    guestops = cast(GuestOps, ops) if ops is not None else None
    noop: Any = lambda event: None  # noqa: E731
    return Executor(hypervisor, FakeDiskBuilder(), tmp_path, noop, guestops=guestops), hypervisor


async def test_an_agent_command_delivered_twice_while_running_runs_once(tmp_path: Path) -> None:
    """A second copy of a running agent command waits for the first run's result."""
    ops = CountingOps()
    run, _ = executor(tmp_path, ops)
    command = AgentExecute("op1/0", UUID, "echo hello")
    first = asyncio.create_task(run.execute(command))
    second = asyncio.create_task(run.execute(command))
    await asyncio.sleep(0.01)
    ops.release.set()
    results = await asyncio.gather(first, second)
    assert ops.runs == 1
    assert results[0] == results[1] and results[0].ok


async def test_an_agent_command_delivered_again_later_gets_the_first_result(
    tmp_path: Path,
) -> None:
    """A copy arriving after the run ended gets the remembered result, not a second run."""
    ops = CountingOps()
    ops.release.set()
    run, _ = executor(tmp_path, ops)
    command = AgentExecute("op1/0", UUID, "echo hello")
    first = await run.execute(command)
    again = await run.execute(command)
    assert ops.runs == 1 and again == first


async def test_a_retryable_agent_failure_is_run_again(tmp_path: Path) -> None:
    """An agent command that failed retryably (agent not ready) runs again when resent."""
    ops = CountingOps(fail_retryable=True)
    ops.release.set()
    run, _ = executor(tmp_path, ops)
    command = AgentExecute("op1/0", UUID, "echo hello")
    assert not (await run.execute(command)).ok
    await run.execute(command)
    assert ops.runs == 2


async def test_a_create_delivered_twice_at_once_builds_one_domain(tmp_path: Path) -> None:
    """Two copies of one create (queued, and resent on reconnect) define the domain once."""
    run, hypervisor = executor(tmp_path)
    command = CreateDomain("c1", UUID, SPEC)
    results = await asyncio.gather(run.execute(command), run.execute(command))
    assert results[0] == results[1] and results[0].ok
    assert list(hypervisor.domains) == [UUID]
    assert hypervisor.defined == 1
