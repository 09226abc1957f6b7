"""Moving a stopped instance to another node: its disks copied through the blob store.

``move(uuid, target)`` runs these steps, each leaving an event on the instance:

1. Refuse what cannot move: an instance that is not ``created`` and stopped
   (``FAILED_PRECONDITION`` "stop the instance first"), one already moving,
   a target that is its own node, not connected or without room (placement
   picks the target when none is named).
2. Claim the instance's CPUs and memory on the target (it counts on both
   nodes while it moves).
3. Ask the source node to export the disks: each one flattened into a
   standalone qcow2 (overlay merged with its base) and uploaded as a blob.
4. Point its interfaces at the target and sync their networks, so the target
   carries them before it builds the domain.
5. Ask the target to build the domain from the new disk specs (each disk's
   base is now ``sf://blob/<uuid>`` of its export) without starting it.
6. Commit the record (node, disks) with compare-and-set on the version read
   at the start, if nobody changed its power or sent it a command meanwhile.
7. Release its usage on the source, remove the domain there and re-sync the
   networks so the source drops those it no longer carries.

Until step 6 nothing about the instance is changed: a failure undoes steps
2-5 (the target's half-built domain removed, interfaces pointed back) and the
instance stays on its source as it was.

``evacuate(node)`` (what a drain does) moves every stopped instance off a
node this way, one at a time, and lists the ones that block (running ones)
and the ones whose move failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from common.nodewire.commands import Command, CreateDomain, DestroyDomain, ExportDisks
from common.nodewire.messages import Result
from common.nodewire.power import STOPPED
from controlplane import lifecycle
from controlplane.domainreq import domain_request
from controlplane.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    MiniCloudError,
    NotFound,
    Unavailable,
)
from controlplane.model import DiskSpec, Instance
from controlplane.nodes import NodeRegistry, Session
from controlplane.placement import place
from controlplane.reconciler import Reconciler
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import NetworkService
from controlplane.settings import Settings
from controlplane.store.blobs import BlobStore
from controlplane.store.occ import retry_on_conflict
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

BLOB_PREFIX = "sf://blob/"
# How long one step (an export, a build on the target) may take: disks are big.
STEP_TIMEOUT = 1800.0


@dataclass
class _Progress:
    """How far one move got: what to undo if it fails."""

    # Prefix of the command ids of this attempt.
    prefix: str
    # Blobs of the exported disks (referenced).
    blobs: list[str] = field(default_factory=list)
    interfaces_moved: bool = False
    built: bool = False


@dataclass(frozen=True)
class Evacuation:
    """What moving every instance off a node did."""

    # Instance UUID -> the node it moved to.
    moved: dict[str, str] = field(default_factory=dict)
    # Instances that cannot move yet (running, paused, being created or deleted).
    blocking: dict[str, str] = field(default_factory=dict)
    # Instance UUID -> why its move failed (it stays where it was).
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether nothing is left on the node."""
        return not self.blocking and not self.failed


class MoveService:
    """Moves stopped instances between nodes."""

    def __init__(
        self,
        settings: Settings,
        records: Records,
        nodes: NodeRegistry,
        reconciler: Reconciler,
        blobs: BlobStore,
        networks: NetworkService | None = None,
        netsync: NetworkSync | None = None,
        step_timeout: float = STEP_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.records = records
        self.nodes = nodes
        self.reconciler = reconciler
        self.blobs = blobs
        self.networks = networks
        self.netsync = netsync
        self.step_timeout = step_timeout
        self.moving: set[str] = set()

    def check_movable(self, instance: Instance) -> None:
        """FailedPrecondition unless the instance is created and stopped."""
        if instance.state != lifecycle.CREATED:
            raise FailedPrecondition(
                f"instance {instance.uuid} is {instance.state}; only a created instance can move"
            )
        if instance.power_state not in STOPPED:
            raise FailedPrecondition(
                f"instance {instance.uuid} is {instance.power_state}: stop the instance first"
            )

    def choose_target(
        self, instance: Instance, target: str = "", exclude: Iterable[str] = ()
    ) -> str:
        """The node to move to: ``target`` checked for room, or placement's choice."""
        source = instance.node
        if target == source:
            raise FailedPrecondition(f"instance {instance.uuid} is already on node {source}")
        left_out = {source, *exclude}
        capacities = [c for c in self.nodes.capacities() if c.name not in left_out]
        if target:
            capacities = [c for c in capacities if c.name == target]
            if not capacities:
                raise Unavailable(f"node {target} is not connected; try again later")
        choice = place(
            capacities,
            instance.spec.cpus,
            instance.spec.memory,
            self.settings.cpu_overcommit,
            self.settings.ram_overcommit,
        )
        return choice.node

    async def move(self, uuid: str, target: str = "", exclude: Iterable[str] = ()) -> Instance:
        """Move a stopped instance to ``target`` (placement's choice if empty); its new record."""
        instance = await self.records.get_instance(uuid)
        if instance is None or instance.state == lifecycle.DELETED:
            raise NotFound(f"instance {uuid} not found")
        self.check_movable(instance)
        if uuid in self.moving:
            raise FailedPrecondition(f"instance {uuid} is already moving")
        source = instance.node
        if not self.nodes.connected(source):
            raise Unavailable(f"node {source} is not connected; try again later")
        target = self.choose_target(instance, target, exclude)
        self.moving.add(uuid)
        try:
            return await self._move(instance, source, target)
        finally:
            self.moving.discard(uuid)

    async def evacuate(self, node: str, exclude: Iterable[str] = ()) -> Evacuation:
        """Move every stopped instance off a node (one at a time, placement choosing each
        target among the other nodes, never those in exclude); list what blocks the rest."""
        result = Evacuation()
        for uuid in await self.records.uuids_on_node(node):
            instance = await self.records.get_instance(uuid)
            if instance is None or instance.state == lifecycle.DELETED or instance.node != node:
                continue
            try:
                self.check_movable(instance)
            except FailedPrecondition as exc:
                result.blocking[uuid] = str(exc)
                continue
            try:
                moved = await self.move(uuid, exclude={node, *exclude})
            except MiniCloudError as exc:
                result.failed[uuid] = str(exc)
                continue
            result.moved[uuid] = moved.node
        log.info(
            "node evacuated" if result.empty else "node partly evacuated",
            node=node,
            moved=len(result.moved),
            blocking=len(result.blocking),
            failed=len(result.failed),
        )
        return result

    async def _move(self, instance: Instance, source: str, target: str) -> Instance:
        uuid = instance.uuid
        bound = log.bind(uuid=uuid, source=source, target=target)
        started = time.monotonic()
        # Command ids unique to this attempt: nodes remember results by id, and a
        # retried move must not get a failed attempt's answers back.
        step = _Progress(f"{uuid}/move-{time.time_ns():x}")
        await self._event(instance, f"moving to node {target}", "audit", source=source)
        self.nodes.add_usage(instance.with_changes(node=target))
        try:
            disks = await self._export(instance, source, step)
            if instance.interfaces:
                step.interfaces_moved = True
                await self._point_interfaces(instance, target)
            moved = instance.with_changes(
                node=target,
                spec=dataclasses.replace(instance.spec, disks=disks),
                command_seq=instance.command_seq + 1,
            )
            step.built = True
            created = await self._ask(
                target,
                CreateDomain(f"{step.prefix}/define", uuid, domain_request(moved), False),
                "define the domain",
            )
            # The domain is the target's only while this stream lasts: a target that
            # reconnects meanwhile removes it as unknown (it is not on the node yet).
            session = self.nodes.sessions.get(target)
            stored = await self._commit(instance, moved, source, session)
        except Exception as exc:
            bound.warning("move failed", error=str(exc))
            await self._undo(instance, target, step)
            await self._event(instance, f"move to node {target} failed: {exc}", "status")
            raise
        self.nodes.release_usage(instance)
        if created.observation is not None:
            stored = await self.reconciler.record_ports(stored, created.observation)
        await self._leave_source(stored, source, step)
        bound.info("instance moved", seconds=round(time.monotonic() - started, 2))
        return stored

    async def _export(
        self, instance: Instance, source: str, step: _Progress
    ) -> tuple[DiskSpec, ...]:
        """The instance's disk specs rebased on blobs of their exported content."""
        spec = instance.spec
        wire = domain_request(instance).disks
        result = await self._ask(
            source,
            ExportDisks(f"{step.prefix}/export", instance.uuid, wire),
            "export the disks",
        )
        if len(result.blobs) != len(spec.disks):
            raise FailedPrecondition(
                f"node {source} exported {len(result.blobs)} disks of {len(spec.disks)}"
            )
        disks = []
        for disk, blob in zip(spec.disks, result.blobs, strict=True):
            if blob:
                await self.blobs.reference(blob)
                step.blobs.append(blob)
                disk = dataclasses.replace(disk, base=f"{BLOB_PREFIX}{blob}")
            disks.append(disk)
        return tuple(disks)

    async def _ask(self, node: str, command: Command, what: str) -> Result:
        """Send a command to a node and wait for its successful result."""
        future = self.nodes.send(node, command)
        try:
            result = await asyncio.wait_for(future, self.step_timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"node {node} did not {what} in time") from exc
        if not result.ok:
            raise FailedPrecondition(f"node {node} could not {what}: {result.error}")
        return result

    async def _commit(
        self, instance: Instance, moved: Instance, source: str, session: Session | None
    ) -> Instance:
        """Store the instance on its new node, unless it (or the target's stream) changed."""

        async def attempt() -> Instance:
            latest = await self.records.get_instance(instance.uuid)
            if session is None or self.nodes.sessions.get(moved.node) is not session:
                raise Unavailable(f"node {moved.node} reconnected while the instance moved")
            if (
                latest is None
                or latest.node != source
                or latest.state != lifecycle.CREATED
                or latest.power_state not in STOPPED
                or latest.command_seq != instance.command_seq
            ):
                raise FailedPrecondition(
                    f"instance {instance.uuid} changed while it was moving; nothing was moved"
                )
            new = latest.with_changes(
                node=moved.node, spec=moved.spec, command_seq=moved.command_seq
            )
            event = self.reconciler.event(
                instance.uuid, f"moved from node {source}", node=moved.node, source=source
            )
            return await self.records.update_instance(latest, new, [event])

        return await retry_on_conflict(attempt, f"instance {instance.uuid}")

    async def _point_interfaces(self, instance: Instance, node: str) -> None:
        """Put the instance's interfaces on node and sync their networks there."""
        if self.networks is None:
            return
        for nic in instance.interfaces:
            await self.networks.update_interface(nic.uuid, lambda i: i.with_changes(node=node))
        if self.netsync is not None:
            await self.netsync.sync({n.network_uuid for n in instance.interfaces})

    async def _undo(self, instance: Instance, target: str, step: _Progress) -> None:
        """Take back what a failed move made; the instance stays on its source."""
        self.nodes.release_usage(instance.with_changes(node=target))
        try:
            for blob in step.blobs:
                await self.blobs.reference(blob, -1)
            if step.built and self.nodes.connected(target):
                self.nodes.send(target, DestroyDomain(f"{step.prefix}/undo", instance.uuid))
            if step.interfaces_moved:
                await self._point_interfaces(instance, instance.node)
                if self.netsync is not None:
                    networks = {n.network_uuid for n in instance.interfaces}
                    await self.netsync.sync(networks, left={target})
        except Exception:
            log.exception("cannot undo a failed move", uuid=instance.uuid, target=target)

    async def _leave_source(self, moved: Instance, source: str, step: _Progress) -> None:
        """Remove the instance's old domain and the networks the source no longer needs."""
        if self.netsync is not None and moved.interfaces:
            await self.netsync.sync({n.network_uuid for n in moved.interfaces}, left={source})
        try:
            await self._ask(
                source,
                DestroyDomain(f"{step.prefix}/leave", moved.uuid),
                "remove the old domain",
            )
        except Exception as exc:
            # The node removes it as an orphan when it next reconnects.
            message = f"old domain on node {source} not removed yet: {exc}"
            await self._event(moved, message, "status")
            return
        await self._event(moved, f"old domain on node {source} removed", "status")

    async def _event(self, instance: Instance, message: str, kind: str, **extra: str) -> None:
        await self.records.add_events(
            instance.namespace, [self.reconciler.event(instance.uuid, message, kind, **extra)]
        )
