"""Carries out control-plane commands on the hypervisor, one message in, one result out.

Commands for one instance run one at a time, in arrival order. A command id
seen before returns its first result (the control plane may replay after a
reconnect). ``execute`` never raises: every failure becomes a result; a
``NodeAgentError`` says by its ``retryable`` whether retrying makes sense,
anything else is an internal error and is not retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, assert_never, cast

import structlog

from common.nodewire.commands import (
    AgentExecute,
    AgentGet,
    AgentPut,
    AttachInterface,
    Command,
    ConsoleAction,
    CreateDomain,
    DestroyDomain,
    EnsureNetwork,
    ExportDisks,
    PowerDomain,
    RemoveNetwork,
    SerialCommand,
    SnapshotDisk,
    target_of,
)
from common.nodewire.domain import DomainRequest, NicRequest
from common.nodewire.messages import NodeEvent, Observation, Result
from common.nodewire.power import STOPPED, PowerAction, PowerState
from nodeagent.consoles import Consoles
from nodeagent.disks.protocol import BlobSink, DiskBuilder, DiskError
from nodeagent.errors import NodeAgentError
from nodeagent.guest.ops import GuestOps
from nodeagent.guest.watch import AGENT_CHANNEL, GuestWatch
from nodeagent.hypervisor.protocol import DomainState, Hypervisor, HypervisorError, PreparedDisk
from nodeagent.network.protocol import NetworkDriver, NetworkError
from nodeagent.snapshots import DiskSnapshots

log = structlog.get_logger(__name__)

REMEMBERED_RESULTS = 4096
REMEMBERED_AGENT_RESULTS = 256
# How long building a domain waits for its networks to be set up on this node.
NETWORK_WAIT = 60.0


A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")


async def _all_of(
    a: Awaitable[A], b: Awaitable[B], c: Awaitable[C], d: Awaitable[D]
) -> tuple[A, B, C, D]:
    """Run four independent steps concurrently; once all have ended, raise the first failure.

    Unlike a bare ``gather``, no step is left running behind a failed one, and
    the error is the step's own (a ``NodeAgentError`` keeps its retryability).
    """
    results = await asyncio.gather(a, b, c, d, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    ra, rb, rc, rd = results
    return cast(A, ra), cast(B, rb), cast(C, rc), cast(D, rd)


def observation_of(uuid: str, state: DomainState | None) -> Observation:
    """A domain's state as reported to the control plane."""
    if state is None:
        return Observation(uuid, exists=False)
    ports = state.ports
    return Observation(
        uuid,
        True,
        state.power_state,
        state.reason,
        ports.console_port,
        ports.vdi_port,
        ports.vdi_tls_port,
        state.legacy,
        ports.vdi_password,
    )


class Executor:
    """Runs commands against the hypervisor and disk builder."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        disks: DiskBuilder,
        instances_dir: Path,
        emit: Callable[[NodeEvent], None],
        clock: Callable[[], float] = time.time,
        guestops: GuestOps | None = None,
        guestwatch: GuestWatch | None = None,
        network: NetworkDriver | None = None,
        network_wait: float = NETWORK_WAIT,
        consoles: Consoles | None = None,
        blobs: BlobSink | None = None,
    ) -> None:
        self.blobs = blobs
        self.consoles = consoles
        self.network = network
        self.network_wait = network_wait
        # Networks ensured on this node since the agent started (set: ready).
        self._networks: dict[str, asyncio.Event] = {}
        # Networks whose last ensure failed for good (another cluster's VXLAN id here, say).
        self._network_errors: dict[str, NetworkError] = {}
        self.guestops = guestops
        self.guestwatch = guestwatch
        self.hypervisor = hypervisor
        self.disks = disks
        self.instances_dir = instances_dir
        self.emit = emit
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._results: OrderedDict[str, Result] = OrderedDict()
        # Agent commands running now, by id (a second copy waits for the first), and
        # the last results (their output may be large: fewer are kept).
        self._agent_runs: dict[str, asyncio.Future[Result]] = {}
        self._agent_results: OrderedDict[str, Result] = OrderedDict()
        self.snapshots = DiskSnapshots(hypervisor, disks, emit, clock, guestops, blobs)

    def console_log(self, uuid: str) -> Path:
        """Where an instance's serial console is logged."""
        return self.instances_dir / uuid / "console.log"

    async def execute(self, command: Command) -> Result:
        """Run a command (or return the remembered result of a replayed one)."""
        match command:
            case AgentExecute() | AgentPut() | AgentGet():
                # In-guest work does not hold up power operations on the instance.
                started = self.clock()
                result = await self._agent_once(command)
            case ConsoleAction():
                # Nor do console reads, screenshots or sessions (and they are not remembered).
                started = self.clock()
                if self.consoles is None:
                    return Result(
                        command.command_id, command.instance_uuid, False, "no consoles here"
                    )
                result = await self.consoles.run(command)
            case _:
                return await self._serially(command)
        if result.ok:
            log.info(
                "command done",
                command=command.command_id,
                kind=type(command).__name__,
                uuid=command.instance_uuid,
                seconds=round(self.clock() - started, 3),
            )
        return result

    async def _serially(self, command: SerialCommand) -> Result:
        uuid = target_of(command)
        lock = self._locks.setdefault(uuid, asyncio.Lock())
        async with lock:
            remembered = self._results.get(command.command_id)
            if remembered is not None:
                return remembered
            result = await self._run(command)
            if not (not result.ok and result.retryable):
                self._remember(result)
        if isinstance(command, DestroyDomain):
            self._locks.pop(uuid, None)
        return result

    async def _agent_once(self, command: AgentExecute | AgentPut | AgentGet) -> Result:
        """Run an agent command once per command id.

        A copy delivered again (a control plane replica that died after sending
        it, say, and the one the node reconnected to sending it again) waits for
        the first run's result, or gets it remembered (the last
        REMEMBERED_AGENT_RESULTS of them; a retryable failure is not remembered).
        """
        cid = command.command_id
        remembered = self._agent_results.get(cid)
        if remembered is not None:
            return remembered
        run = self._agent_runs.get(cid)
        if run is None:
            run = asyncio.ensure_future(self._agent(command))
            self._agent_runs[cid] = run
            run.add_done_callback(self._agent_done(cid))
        return await asyncio.shield(run)

    def _agent_done(self, cid: str) -> Callable[[asyncio.Future[Result]], None]:
        def done(run: asyncio.Future[Result]) -> None:
            self._agent_runs.pop(cid, None)
            if run.cancelled() or run.exception() is not None:
                return
            result = run.result()
            if not (not result.ok and result.retryable):
                self._agent_results[cid] = result
                while len(self._agent_results) > REMEMBERED_AGENT_RESULTS:
                    self._agent_results.popitem(last=False)

        return done

    async def _agent(self, command: AgentExecute | AgentPut | AgentGet) -> Result:
        uuid = command.instance_uuid
        if self.guestops is None:
            return Result(command.command_id, uuid, False, "this node has no guest agent support")
        try:
            result = await self.guestops.run(command)
        except NodeAgentError as exc:
            log.warning("agent command failed", command=command.command_id, error=str(exc))
            return Result(command.command_id, uuid, False, str(exc), exc.retryable)
        except Exception as exc:
            log.exception("agent command crashed", command=command.command_id)
            return Result(command.command_id, uuid, False, f"internal error: {exc}")
        return Result(command.command_id, uuid, True, agent=result)

    def _remember(self, result: Result) -> None:
        self._results[result.command_id] = result
        while len(self._results) > REMEMBERED_RESULTS:
            self._results.popitem(last=False)

    async def _run(self, command: SerialCommand) -> Result:
        uuid = target_of(command)
        kind = type(command).__name__
        bound = log.bind(command=command.command_id, kind=kind, uuid=uuid)
        started = self.clock()
        try:
            state: DomainState | None
            match command:
                case CreateDomain():
                    state = await self._create(command.domain, command.start)
                case PowerDomain():
                    state = await self._power(command)
                case DestroyDomain():
                    await self._destroy(uuid)
                    state = None
                case EnsureNetwork() | RemoveNetwork():
                    await self._network(command)
                    return Result(command.command_id, uuid, True)
                case AttachInterface():
                    state = await self._attach(command)
                case ExportDisks():
                    blobs, state = await self._export(command)
                    bound.info("command done", seconds=round(self.clock() - started, 3))
                    return Result(
                        command.command_id,
                        uuid,
                        True,
                        observation=observation_of(uuid, state),
                        blobs=blobs,
                    )
                case SnapshotDisk():
                    snapshot = await self.snapshots.take(command)
                    bound.info("command done", seconds=round(self.clock() - started, 3))
                    current = await self._current(uuid)
                    return Result(
                        command.command_id, uuid, True, observation=current, snapshot=snapshot
                    )
                case _:
                    assert_never(command)
        except NodeAgentError as exc:
            bound.warning("command failed", error=str(exc), retryable=exc.retryable)
            current = await self._current(uuid)
            return Result(command.command_id, uuid, False, str(exc), exc.retryable, current)
        except Exception as exc:
            bound.exception("command crashed")
            current = await self._current(uuid)
            return Result(command.command_id, uuid, False, f"internal error: {exc}", False, current)
        bound.info("command done", seconds=round(self.clock() - started, 3))
        return Result(command.command_id, uuid, True, observation=observation_of(uuid, state))

    async def _current(self, uuid: str) -> Observation | None:
        try:
            return observation_of(uuid, await self.hypervisor.get_domain(uuid))
        except HypervisorError:
            return None

    async def _create(self, spec: DomainRequest, start: bool = True) -> DomainState:
        """Prepare everything the domain needs at once, then define (and start) it.

        The disks, the config drive, the firmware template and the network
        bridges do not depend on each other, so they are made concurrently:
        the domain starts as soon as the slowest of them is ready.
        """
        uuid = spec.uuid
        existing = await self.hypervisor.get_domain(uuid)
        if existing is not None and existing.power_state == PowerState.ON:
            return existing
        prepared, drive, template, spec = await _all_of(
            self._disks(spec),
            self._config_drive(spec),
            self._firmware(spec),
            self._with_bridges(spec),
        )
        if drive is not None:
            # Second disk, as Shaken Fist attaches it: vdb behind a virtio boot disk.
            prepared.insert(1, drive)
        if template is not None:
            spec = dataclasses.replace(spec, nvram_template=str(template))
        self.console_log(uuid).parent.mkdir(parents=True, exist_ok=True)
        state = await self.hypervisor.define_and_start(
            spec, prepared, self.console_log(uuid), start=start
        )
        if not start:
            self.emit(NodeEvent(uuid, "domain defined", timestamp=self.clock()))
            return state
        self.emit(NodeEvent(uuid, "domain started", timestamp=self.clock()))
        if self.guestwatch is not None:
            self.guestwatch.domain_on(uuid, AGENT_CHANNEL in spec.side_channels)
        return state

    async def _disks(self, spec: DomainRequest) -> list[PreparedDisk]:
        """Make the instance's disks, with events before and after."""
        uuid = spec.uuid
        self.emit(NodeEvent(uuid, "preparing disks", timestamp=self.clock()))
        started = self.clock()
        prepared = await self.disks.prepare(
            uuid,
            spec.disks,
            lambda message: self.emit(NodeEvent(uuid, message, timestamp=self.clock())),
        )
        self.emit(
            NodeEvent(uuid, "disks ready", timestamp=self.clock(), duration=self.clock() - started)
        )
        return prepared

    async def _firmware(self, spec: DomainRequest) -> Path | None:
        """The local NVRAM template a UEFI instance asked for (None: the OVMF default)."""
        if not (spec.uefi and spec.nvram_template):
            return None
        return await self.disks.firmware_template(
            spec.nvram_template,
            lambda message: self.emit(NodeEvent(spec.uuid, message, timestamp=self.clock())),
        )

    async def _network(self, command: EnsureNetwork | RemoveNetwork) -> None:
        if self.network is None:
            raise NetworkError("this node has no network driver")
        uuid = command.network_uuid
        if isinstance(command, RemoveNetwork):
            await self.network.remove(uuid)
            self._networks.pop(uuid, None)
            self._network_errors.pop(uuid, None)
            return
        try:
            await self.network.ensure(command.network)
        except NetworkError as exc:
            if not exc.retryable:
                self._network_errors[uuid] = exc
            raise
        self._network_errors.pop(uuid, None)
        self._networks.setdefault(uuid, asyncio.Event()).set()

    async def _bridge(self, nic: NicRequest) -> NicRequest:
        """The interface with its network's bridge, once the network is set up here."""
        if self.network is None:
            raise NetworkError("this node has no network driver")
        ready = self._networks.setdefault(nic.network_uuid, asyncio.Event())
        try:
            if not ready.is_set() and nic.network_uuid in self._network_errors:
                raise TimeoutError  # it failed for good: no use waiting
            await asyncio.wait_for(ready.wait(), self.network_wait)
        except TimeoutError as exc:
            if failed := self._network_errors.get(nic.network_uuid):
                raise NetworkError(
                    f"network {nic.network_uuid} cannot be set up on this node: {failed}",
                    retryable=False,
                ) from exc
            raise NetworkError(
                f"network {nic.network_uuid} is not set up on this node yet", retryable=True
            ) from exc
        return dataclasses.replace(nic, bridge=self.network.bridge_name(nic.network_uuid))

    async def _with_bridges(self, spec: DomainRequest) -> DomainRequest:
        if not spec.interfaces:
            return spec
        nics = [await self._bridge(nic) for nic in spec.interfaces]
        return dataclasses.replace(spec, interfaces=tuple(nics))

    async def _attach(self, command: AttachInterface) -> DomainState | None:
        nic = await self._bridge(command.nic)
        await self.hypervisor.attach_interface(command.instance_uuid, nic)
        self.emit(
            NodeEvent(
                command.instance_uuid,
                f"interface {nic.order} attached to {nic.bridge}",
                timestamp=self.clock(),
            )
        )
        return await self.hypervisor.get_domain(command.instance_uuid)

    async def networks_present(self) -> list[str]:
        """UUIDs of the networks this node has anything for."""
        if self.network is None:
            return []
        try:
            return await self.network.present()
        except NetworkError:
            log.exception("cannot list this node's networks")
            return []

    async def _config_drive(self, spec: DomainRequest) -> PreparedDisk | None:
        """Build the instance's config drive afresh, with an event saying so."""
        started = self.clock()
        drive = await self.disks.config_drive(spec)
        if drive is not None:
            self.emit(
                NodeEvent(
                    spec.uuid,
                    "config drive built",
                    timestamp=self.clock(),
                    duration=self.clock() - started,
                )
            )
        return drive

    async def _power(self, command: PowerDomain) -> DomainState:
        """A power action; powering on a stopped domain first rebuilds its config drive."""
        uuid, action = command.instance_uuid, command.action
        if action == PowerAction.ON and command.domain is not None:
            current = await self.hypervisor.get_domain(uuid)
            # Only a stopped guest: a running one keeps the drive it booted with.
            if current is not None and current.power_state in STOPPED:
                await self._config_drive(command.domain)
        return await self.hypervisor.power(uuid, action)

    async def _export(self, command: ExportDisks) -> tuple[tuple[str, ...], DomainState]:
        """Upload a stopped instance's disks flattened, as blobs (a running one is refused)."""
        uuid = command.instance_uuid
        state = await self.hypervisor.get_domain(uuid)
        if state is None:
            raise DiskError(f"instance {uuid} has no domain on this node")
        if state.power_state not in STOPPED:
            raise DiskError(f"instance {uuid} is {state.power_state}; stop the instance first")
        if self.blobs is None:
            raise DiskError("this node cannot upload blobs")
        self.emit(NodeEvent(uuid, "exporting disks", timestamp=self.clock()))
        started = self.clock()
        blobs = await self.disks.export(
            uuid,
            command.disks,
            self.blobs,
            lambda message: self.emit(NodeEvent(uuid, message, timestamp=self.clock())),
        )
        self.emit(
            NodeEvent(
                uuid,
                "disks exported",
                timestamp=self.clock(),
                duration=self.clock() - started,
                extra={"blobs": list(blobs)},
            )
        )
        return blobs, state

    async def _destroy(self, uuid: str) -> None:
        if self.consoles is not None:
            await self.consoles.close_instance(uuid)
        if self.guestwatch is not None:
            self.guestwatch.domain_gone(uuid)
        await self.hypervisor.remove(uuid)
        await self.disks.remove(uuid)
        folder = self.instances_dir / uuid
        if folder.exists():
            await asyncio.to_thread(shutil.rmtree, folder, True)
        self.emit(NodeEvent(uuid, "domain and disks removed", timestamp=self.clock()))

    async def inventory(self) -> list[Observation]:
        """Every domain the hypervisor has."""
        return [observation_of(d.uuid, d) for d in await self.hypervisor.list_domains()]
