"""Agent operations: queued per instance, run one at a time while the agent is ready.

Operations follow Shaken Fist: ``commands`` as dicts, ``results`` keyed "0",
"1", ...; states queued → executing → complete or error (and deleted).
Execute output over 10 KiB is kept in a blob (``stdout_blob``,
``stderr_blob``); a get stores the file's content in a blob
(``content_blob``). ExecuteStream subscribers receive output chunks as the
node relays them.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from common import sidechannels
from common.nodewire.commands import AgentCommand, AgentExecute, AgentGet, AgentPut
from common.nodewire.messages import ExecResult, GetResult, Result
from common.tasks import Tasks
from controlplane.errors import Busy, FailedPrecondition, InvalidArgument, NotFound
from controlplane.metrics import PlaneMetrics
from controlplane.model import AgentOperation, Instance
from controlplane.nodes import NodeRegistry
from controlplane.services.namespaces import can_see
from controlplane.store import occ
from controlplane.store.agentops import AgentOperations
from controlplane.store.blobs import BlobStore
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

INLINE_OUTPUT_LIMIT = 10 * 1024
DEFAULT_TIMEOUT = 300.0
REQUEUE_DELAY = 1.0
MAX_TIMEOUT = 24 * 3600.0
READY = "ready"
FINISHED = ("complete", "error", "deleted")


@dataclass(eq=False)
class OutputStream:
    """One ExecuteStream caller's queue of (stream, bytes) chunks; None ends it."""

    queue: asyncio.Queue[tuple[str, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=4096)
    )


class AgentService:
    """Create, run and report agent operations."""

    def __init__(
        self,
        records: Records,
        ops: AgentOperations,
        blobs: BlobStore,
        nodes: NodeRegistry,
        clock: Callable[[], float],
        tasks: Tasks | None = None,
        metrics: PlaneMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.records = records
        self.ops = ops
        self.blobs = blobs
        self.nodes = nodes
        self.clock = clock
        self._running: dict[str, str] = {}
        self._streams: dict[str, OutputStream] = {}
        self.tasks = tasks if tasks is not None else Tasks()

    # -- creating operations -------------------------------------------------

    async def execute(
        self,
        instance: Instance,
        command_line: str,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0.0,
        stream: OutputStream | None = None,
    ) -> AgentOperation:
        """Queue a command line (its output streamed to ``stream`` if given)."""
        if not command_line.strip():
            raise InvalidArgument("a command line is required")
        if timeout < 0 or timeout > MAX_TIMEOUT:
            raise InvalidArgument(f"timeout must be between 0 and {MAX_TIMEOUT:g} seconds")
        command: dict[str, Any] = {
            "command": "execute",
            "commandline": command_line,
            "block-for-result": True,
        }
        if env:
            command["env"] = dict(env)
        if cwd:
            command["cwd"] = cwd
        if timeout:
            command["timeout"] = timeout
        return await self._queue(instance, [command], stream)

    async def put(self, instance: Instance, blob_uuid: str, path: str, mode: int) -> AgentOperation:
        """Queue copying a blob into the instance at path, then setting its mode."""
        _check_path(path)
        blob = await self.blobs.get(blob_uuid)
        if blob is None:
            raise NotFound(f"blob {blob_uuid!r} not found")
        if mode < 0 or mode > 0o177777:
            raise InvalidArgument(f"mode {mode} is not a file mode")
        await self.blobs.reference(blob.uuid)
        return await self._queue(
            instance,
            [
                {"command": "put-blob", "blob_uuid": blob.uuid, "path": path},
                {"command": "chmod", "mode": mode, "path": path},
            ],
        )

    async def get_file(self, instance: Instance, path: str) -> AgentOperation:
        """Queue copying a file out of the instance into a new blob."""
        _check_path(path)
        return await self._queue(instance, [{"command": "get-file", "path": path}])

    async def _queue(
        self, instance: Instance, commands: list[dict[str, Any]], stream: OutputStream | None = None
    ) -> AgentOperation:
        if instance.state in ("deleted", "delete-wait"):
            raise FailedPrecondition(f"instance {instance.uuid} is {instance.state}")
        if sidechannels.AGENT_CHANNEL not in instance.spec.side_channels:
            raise FailedPrecondition(
                "instance has no sf-agent side channel; create it with side_channels=['sf-agent']"
            )
        op = AgentOperation(
            uuid=str(uuidlib.uuid4()),
            namespace=instance.namespace,
            instance_uuid=instance.uuid,
            commands=tuple(commands),
            state="queued",
            created_at=self.clock(),
        )
        if stream is not None:
            self._streams[op.uuid] = stream
        stored = await self.ops.create(op)
        self._count(stored, "queued")
        self.kick(instance.uuid)
        return stored

    # -- reading -------------------------------------------------------------

    async def get(self, namespace: str, uuid: str) -> AgentOperation:
        """An operation by UUID, in the namespace."""
        op = await self.ops.get(uuid)
        if op is None or not can_see(namespace, op.namespace):
            raise NotFound(f"agent operation {uuid!r} not found")
        return op

    async def list_for(self, instance: Instance, include_all: bool = False) -> list[AgentOperation]:
        """An instance's queued operations (every one with include_all), oldest first."""
        ops = await self.ops.for_instance(instance.uuid)
        if include_all:
            return [op for op in ops if op.state != "deleted"]
        return [op for op in ops if op.state in ("queued", "executing")]

    async def delete(self, namespace: str, uuid: str) -> AgentOperation:
        """Mark an operation deleted (a queued one will not run)."""

        def mutate(op: AgentOperation) -> AgentOperation:
            if op.state == "executing":
                raise FailedPrecondition("an executing operation cannot be deleted; wait for it")
            return op if op.state == "deleted" else op.with_changes(state="deleted")

        return await occ.update(
            lambda: self.get(namespace, uuid), mutate, self.ops.update, f"agent operation {uuid}"
        )

    def unsubscribe(self, op_uuid: str) -> None:
        """Stop streaming an operation's output."""
        self._streams.pop(op_uuid, None)

    def on_output(self, command_id: str, stream: str, data: bytes) -> None:
        """A node relayed output of a running execute: pass it to the stream's caller."""
        sub = self._streams.get(command_id.split("/", 1)[0])
        if sub is not None:
            try:
                sub.queue.put_nowait((stream, data))
            except asyncio.QueueFull:
                log.warning("execute stream reader too slow; output dropped", command=command_id)

    # -- running -------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: operations left executing by a previous run end in error."""
        for op in await self.ops.all_in_state("executing"):
            await self.ops.update(
                op,
                op.with_changes(
                    state="error",
                    error_message="the control plane restarted while the operation ran",
                ),
            )

    def kick(self, instance_uuid: str) -> None:
        """Start the instance's next queued operation if none is running."""
        if instance_uuid in self._running:
            return
        self._running[instance_uuid] = ""
        self.tasks.spawn(self._next(instance_uuid), name=f"agent operations of {instance_uuid}")

    async def _next(self, instance_uuid: str) -> None:
        requeued = False
        try:
            instance = await self.records.get_instance(instance_uuid)
            if instance is None or not instance.agent_state.startswith(READY):
                return
            if not self.nodes.connected(instance.node):
                return
            queued = await self.ops.next_queued(instance_uuid)
            if queued is None:
                return
            op = await self.ops.update(queued, queued.with_changes(state="executing"))
            self._count(op, "executing")
            self._running[instance_uuid] = op.uuid
            requeued = not await self._run(instance, op)
        except Exception:
            log.exception("agent operation runner failed", instance=instance_uuid)
            return
        finally:
            self._running.pop(instance_uuid, None)
        if not requeued:
            self.kick(instance_uuid)

    def executing(self) -> int:
        """How many operations are executing now (one per instance at most)."""
        return sum(1 for op_uuid in self._running.values() if op_uuid)

    def _count(self, op: AgentOperation, state: str, started: float | None = None) -> None:
        """Count an operation entering state (and, when it ends, how long it executed)."""
        if self.metrics is None:
            return
        command = str(op.commands[0].get("command", "")) if op.commands else ""
        self.metrics.agent_operations.inc(command=command, state=state)
        if started is not None:
            elapsed = time.perf_counter() - started
            self.metrics.agent_operation_duration.observe(elapsed, command=command, state=state)

    async def _run(self, instance: Instance, op: AgentOperation) -> bool:
        """Run one operation; False when it went back to the queue."""
        started = time.perf_counter()
        command = node_command(op, stream_output=op.uuid in self._streams)
        try:
            future = self.nodes.send(instance.node, command)
            outcome = await asyncio.wait_for(future, command.timeout + 60)
        except Exception as exc:  # disconnects, deadlines
            outcome = Result(command.command_id, instance.uuid, False, str(exc) or "timed out")
        if not outcome.ok and outcome.retryable:
            # Nothing reached the guest (its agent was not ready after all): queue it again.
            log.info("agent not ready; operation queued again", op=op.uuid, error=outcome.error)
            await self._requeue(op)
            self._count(op, "queued")
            return False
        state = await self._finish(op, outcome)
        self._count(op, state, started)
        return True

    async def _requeue(self, op: AgentOperation) -> None:
        await self._settle(op, lambda current: current.with_changes(state="queued"))
        self._later(REQUEUE_DELAY, op.instance_uuid)

    async def _settle(
        self, op: AgentOperation, change: Callable[[AgentOperation], AgentOperation]
    ) -> None:
        """Apply change to the stored operation; a runner gives up quietly when always beaten."""

        async def read() -> AgentOperation:
            return await self.ops.get(op.uuid) or op

        try:
            await occ.update(read, change, self.ops.update, f"agent operation {op.uuid}")
        except Busy:
            log.warning("agent operation changing too fast; left as it is", op=op.uuid)

    def _later(self, delay: float, instance_uuid: str) -> None:
        async def kick_later() -> None:
            await asyncio.sleep(delay)
            self.kick(instance_uuid)

        self.tasks.spawn(kick_later(), name=f"agent operations of {instance_uuid}, later")

    async def _finish(self, op: AgentOperation, outcome: Result) -> str:
        """Store the operation's outcome; returns the state it ended in."""
        results: dict[str, Any] = {}
        state, error = "complete", ""
        agent = outcome.agent
        if not outcome.ok:
            state, error = "error", outcome.error or "the agent operation failed"
        elif op.commands[0]["command"] == "execute":
            done = agent if isinstance(agent, ExecResult) else ExecResult(-1)
            results["0"] = await self._execute_result(op, done)
        elif op.commands[0]["command"] == "put-blob":
            results = {"0": {"path": op.commands[0]["path"]}, "1": {"path": op.commands[1]["path"]}}
        else:
            got = agent if isinstance(agent, GetResult) else GetResult("", "")
            results["0"] = {
                "path": op.commands[0]["path"],
                "stat_result": got.stat,
                "content_blob": got.content_blob,
            }
        await self._settle(
            op,
            lambda current: current.with_changes(state=state, results=results, error_message=error),
        )
        stream = self._streams.get(op.uuid)
        if stream is not None:
            stream.queue.put_nowait(None)
        return state

    async def _execute_result(self, op: AgentOperation, result: ExecResult) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command-line": op.commands[0]["commandline"],
            "result": True,
            "return-code": result.return_code,
        }
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if len(text.encode()) > INLINE_OUTPUT_LIMIT:
                blob = await self.blobs.add_bytes(text.encode(), self.clock())
                out[f"{name}_blob"] = blob.uuid
                out[name] = ""
            else:
                out[name] = text
        return out


def node_command(op: AgentOperation, stream_output: bool = False) -> AgentCommand:
    """The node command that runs a stored (Shaken Fist shaped) operation."""
    command, command_id = op.commands[0], f"{op.uuid}/0"
    if command["command"] == "execute":
        return AgentExecute(
            command_id,
            op.instance_uuid,
            command_line=str(command["commandline"]),
            env={str(k): str(v) for k, v in (command.get("env") or {}).items()},
            cwd=str(command.get("cwd", "")),
            timeout=float(command.get("timeout") or DEFAULT_TIMEOUT),
            stream_output=stream_output,
        )
    if command["command"] == "put-blob":
        return AgentPut(
            command_id,
            op.instance_uuid,
            path=str(command["path"]),
            blob_uuid=str(command["blob_uuid"]),
            mode=int(op.commands[1]["mode"]) & 0o7777,
            timeout=DEFAULT_TIMEOUT,
        )
    return AgentGet(
        command_id, op.instance_uuid, path=str(command["path"]), timeout=DEFAULT_TIMEOUT
    )


def _check_path(path: str) -> None:
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise InvalidArgument(f"path {path!r} must be an absolute path inside the instance")
