"""Instance use cases: create, read, list, delete, power operations, events, watch."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid as uuidlib
from collections.abc import Mapping

import structlog

from common import logs, sidechannels
from controlplane import lifecycle
from controlplane.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from controlplane.hub import Hub, Subscription
from controlplane.model import Event, Instance, InstanceSpec
from controlplane.nodes import NodeRegistry
from controlplane.nodestate import NodeState
from controlplane.nodestate import refusal as state_refusal
from controlplane.placement import Affinity, Capacity, Neighbours, place
from controlplane.reconciler import Reconciler
from controlplane.services.artifacts import ArtifactService
from controlplane.services.events import read_events
from controlplane.services.namespaces import SYSTEM, can_see
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import NetworkService
from controlplane.settings import Settings
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Conflict
from controlplane.store.records import Records
from controlplane.validation import check_request_id, check_spec, looks_like_uuid

log = structlog.get_logger(__name__)

# A page's store scans read at least this many records at a time (a namespace
# with few instances among many others' fills a page in few scans).
SCAN_CHUNK = 128
# A node's name is its host name: placed_on longer than this names no node.
MAX_NODE_NAME = 253


class InstanceService:
    """What callers can do with instances, within their namespace."""

    def __init__(
        self,
        settings: Settings,
        records: Records,
        nodes: NodeRegistry,
        reconciler: Reconciler,
        hub: Hub,
        artifacts: ArtifactService | None = None,
        networks: NetworkService | None = None,
        netsync: NetworkSync | None = None,
    ) -> None:
        self.networks = networks
        self.netsync = netsync
        self.artifacts = artifacts
        self.settings = settings
        self.records = records
        self.nodes = nodes
        self.reconciler = reconciler
        self.hub = hub

    async def create(
        self, namespace: str, spec: InstanceSpec, request_id: str = "", placed_on: str = ""
    ) -> Instance:
        """Check, place and record a new instance, then ask its node to build it.

        With a client request id, a create that was already made with it (its answer
        lost, say, and the call retried) returns the instance that create made.
        placed_on (the administrator's, checked by the caller) names the only
        node placement may choose; capacity and hard affinity still apply.
        """
        check_request_id(request_id)
        if request_id and (made := await self._made_by(namespace, request_id)) is not None:
            return made
        spec = check_spec(spec)
        affinity = Affinity.parse(spec.metadata.get("affinity"))
        neighbours = await self._neighbours(namespace) if not affinity.empty else None

        async def placement() -> tuple[list[Capacity], str, Mapping[str, float]]:
            candidates = await self._candidates(placed_on)
            choice = place(
                candidates,
                spec.cpus,
                spec.memory,
                self.settings.cpu_overcommit,
                self.settings.ram_overcommit,
                affinity,
                neighbours,
                # A named node was checked as it is: no waiting for others to come back.
                reconnecting=() if placed_on else self.nodes.reconnecting(),
            )
            return candidates, choice.node, choice.scores

        # The request's own mistakes (a base that cannot be used) are refused before
        # the cluster's state (no node with room) is looked at.
        if self.artifacts is not None:
            disks = [
                dataclasses.replace(d, base=await self.artifacts.resolve_base(namespace, d.base))
                if d.base
                else d
                for d in spec.disks
            ]
            spec = dataclasses.replace(spec, disks=tuple(disks))
            if spec.nvram_template:
                template = await self.artifacts.resolve_base(namespace, spec.nvram_template)
                spec = dataclasses.replace(spec, nvram_template=template)
        first = [await placement()]

        async def attempt() -> Instance:
            # Placed again on every later try: a conflict may mean the room was taken.
            candidates, node, scores = first.pop() if first else await placement()
            chosen = next(c for c in candidates if c.name == node)
            try:
                return await self._commit(namespace, spec, chosen, scores, affinity, request_id)
            except Conflict as exc:
                if request_id and (made := await self._made_by(namespace, request_id)):
                    return made  # the same request, made concurrently
                if await self.records.find_by_name(namespace, spec.name) is not None:
                    raise AlreadyExists(
                        f"an instance named {spec.name!r} already exists in {namespace}"
                    ) from exc
                # The node's usage, an address, a MAC or a network changed meanwhile.
                raise

        return await retry_on_conflict(attempt, "the instance's node and networks")

    async def _candidates(self, placed_on: str) -> list[Capacity]:
        """The nodes placement chooses among: all connected ones, or placed_on's alone.

        A placed_on node that is unknown, not connected or does not take new
        instances is refused here, with a message naming it and why.
        """
        capacities = self.nodes.capacities()
        if not placed_on:
            return capacities
        if len(placed_on) > MAX_NODE_NAME:
            raise InvalidArgument(f"placed_on is a node name, at most {MAX_NODE_NAME} characters")
        found = [c for c in capacities if c.name == placed_on]
        if not found:
            known = await self.records.get_node(placed_on)
            if known is None or known.state == NodeState.DELETED:
                raise FailedPrecondition(f"cannot place on node {placed_on!r}: no such node")
            raise FailedPrecondition(
                f"cannot place on node {placed_on}: it is not connected (it is {known.state})"
            )
        why = state_refusal(found[0].state)
        if why:
            raise FailedPrecondition(
                f"cannot place on node {placed_on}: it {why} and takes no new instances"
            )
        return found

    async def _commit(
        self,
        namespace: str,
        spec: InstanceSpec,
        chosen: Capacity,
        scores: Mapping[str, float],
        affinity: Affinity,
        request_id: str = "",
    ) -> Instance:
        """Allocate interfaces, claim the node's room and store the instance in one batch.

        The claim is a compare-and-set of the node's committed usage in the store
        (controlplane/usage.py): Conflict when another replica (or another create)
        took the room first, and the caller places again.
        """
        node = chosen.name
        now = self.reconciler.clock()
        uuid = str(uuidlib.uuid4())
        logs.bind(instance=uuid)
        alloc = None
        if spec.networks and self.networks is not None:
            alloc = await self.networks.allocate(
                namespace, uuid, node, spec.networks, hostname=spec.name
            )
            spec = dataclasses.replace(spec, networks=tuple(alloc.specs))
        elif spec.networks:
            raise InvalidArgument("this control plane has no networks")
        view = lifecycle.View(lifecycle.INITIAL, "initial")
        view = lifecycle.View(lifecycle.decide(view, "schedule").state, "initial")
        placed = lifecycle.decide(view, "place")
        instance = Instance(
            uuid=uuid,
            namespace=namespace,
            spec=spec,
            state=placed.state,
            power_state=placed.power_state,
            node=node,
            created_at=now,
            state_updated_at=now,
            agent_state="not ready (no contact)"
            if sidechannels.AGENT_CHANNEL in spec.side_channels
            else "",
            command_seq=1,
            metadata=dict(spec.metadata),
            interfaces=alloc.nics if alloc is not None else (),
        )
        event = self.reconciler.event
        placed_extra: dict[str, object] = {"node": node}
        if not affinity.empty:
            placed_extra["affinity_scores"] = dict(scores)
        events = [
            event(uuid, "create requested", "audit", cpus=spec.cpus, memory=spec.memory),
            event(uuid, f"schedule complete: placed on {node}", "mutate", **placed_extra),
            event(uuid, "state changed from initial to creating", old="initial", new="creating"),
        ]
        if alloc is not None:
            events += alloc.events
        limit = (
            chosen.cpus * self.settings.cpu_overcommit,
            chosen.memory_mb * self.settings.ram_overcommit,
        )
        claim = await self.nodes.usage.claim(node, spec.cpus, spec.memory, limit)
        ops = [*(alloc.ops if alloc is not None else ()), claim.op]
        try:
            stored = await self.records.create_instance(instance, events, ops, request_id)
        except BaseException:
            self.nodes.usage.settle(claim, False)
            raise
        self.nodes.usage.settle(claim, True)
        if alloc is not None and self.netsync is not None:
            # Queued before the create, so the node has the networks when it builds.
            await self.netsync.sync(alloc.network_uuids)
        self.reconciler.perform(stored, placed.actions)
        log.info("instance created", uuid=uuid, name=spec.name, node=node, namespace=namespace)
        return stored

    async def _made_by(self, namespace: str, request_id: str) -> Instance | None:
        uuid = await self.records.created_by(namespace, request_id)
        return await self.records.get_instance(uuid) if uuid else None

    async def _neighbours(self, namespace: str) -> Neighbours:
        """The tags of the namespace's live instances, per node (for affinity)."""
        found: dict[str, list[list[str]]] = {}
        for inst in await self.records.list_instances():
            if inst.namespace == namespace and inst.node and inst.state != lifecycle.DELETED:
                tags = inst.metadata.get("tags")
                found.setdefault(inst.node, []).append(tags if isinstance(tags, list) else [])
        return found

    async def get(self, namespace: str, ref: str) -> Instance:
        """An instance by UUID (deleted ones too) or by live name, in the namespace."""
        if not ref:
            raise InvalidArgument("an instance UUID or name is required")
        found = None
        if looks_like_uuid(ref):
            found = await self.records.get_instance(ref)
        if found is None:
            found = await self.records.find_by_name(namespace, ref)
        if found is None and namespace == SYSTEM:
            found = await self._find_by_name_anywhere(ref)
        if found is None or not can_see(namespace, found.namespace):
            raise NotFound(f"instance {ref!r} not found")
        logs.bind(instance=found.uuid)
        return found

    async def _find_by_name_anywhere(self, name: str) -> Instance | None:
        """A live instance with that name in any namespace (for system); ambiguity refused."""
        matches = [
            i
            for i in await self.records.list_instances()
            if i.spec.name == name and i.state != lifecycle.DELETED
        ]
        if len(matches) > 1:
            raise InvalidArgument(
                f"several instances are named {name!r} in different namespaces; use a UUID"
            )
        return matches[0] if matches else None

    async def list_all(self, namespace: str, include_deleted: bool = False) -> list[Instance]:
        """The namespace's instances (every namespace's for system), oldest first."""
        found = [
            i
            for i in await self.records.list_instances()
            if can_see(namespace, i.namespace) and (include_deleted or i.state != lifecycle.DELETED)
        ]
        return sorted(found, key=lambda i: i.created_at)

    async def list_page(
        self, namespace: str, include_deleted: bool, size: int, after: str
    ) -> tuple[list[Instance], str]:
        """One page of the caller's instances in UUID order, past UUID after.

        Returns the page and the UUID the next page resumes after ("" when
        this is the last page). Records the caller may not see are skipped
        inside the store scan, so a page holds only the caller's own (for
        system, everyone's) and is full unless it is the last one.
        """
        found: list[Instance] = []
        cursor = after
        while True:
            want = max(size - len(found) + 1, SCAN_CHUNK)  # +1: is there a next page?
            batch = await self.records.instances_after(cursor, want)
            for inst in batch:
                if len(found) == size:
                    return found, cursor
                cursor = inst.uuid
                if can_see(namespace, inst.namespace) and (
                    include_deleted or inst.state != lifecycle.DELETED
                ):
                    found.append(inst)
            if len(batch) < want:
                return found, ""

    async def delete(self, namespace: str, ref: str) -> Instance:
        """Start deleting an instance; deleting a deleted instance is a no-op."""
        instance = await self.get(namespace, ref)
        if instance.state in (lifecycle.DELETED, lifecycle.DELETE_WAIT):
            return instance
        await self.records.add_events(
            instance.namespace, [self.reconciler.event(instance.uuid, "delete requested", "audit")]
        )
        return await self.reconciler.transition(instance.uuid, "delete")

    async def power(self, namespace: str, ref: str, op: str) -> Instance:
        """Perform a power operation and wait for the node to confirm it."""
        instance = await self.get(namespace, ref)
        if op not in lifecycle.POWER_OPS:
            raise InvalidArgument(f"unknown power operation {op!r}")
        if instance.state == lifecycle.CREATED and not self.nodes.connected(instance.node):
            # Checked first: while its node is away the power state is unknown.
            raise Unavailable(f"node {instance.node} is not connected; try again later")
        view = lifecycle.View(instance.state, instance.power_state, bool(instance.node))
        try:
            lifecycle.decide(view, f"power-{op}")
        except lifecycle.Refused as exc:
            raise FailedPrecondition(str(exc)) from exc
        if not self.nodes.connected(instance.node):
            raise Unavailable(f"node {instance.node} is not connected; try again later")
        await self.records.add_events(
            instance.namespace, [self.reconciler.event(instance.uuid, f"{op} requested", "audit")]
        )
        updated, futures = await self.reconciler.transition_sent(instance.uuid, f"power-{op}")
        for future in futures:
            try:
                outcome = await asyncio.wait_for(future, self.settings.command_timeout)
            except TimeoutError as exc:
                raise DeadlineExceeded(
                    f"node {updated.node} did not finish {op} in time; it may still"
                ) from exc
            if not outcome.ok:
                raise FailedPrecondition(f"{op} failed on node {updated.node}: {outcome.error}")
        return await self.get(namespace, updated.uuid)

    async def events(
        self, namespace: str, ref: str, event_type: str = "", limit: int = 100
    ) -> list[Event]:
        """An instance's events, newest first."""
        instance = await self.get(namespace, ref)
        return await read_events(self.records, instance.uuid, event_type, limit)

    async def watch(self, namespace: str, ref: str = "") -> Subscription:
        """Subscribe to changes of one instance, or of every instance in the namespace."""
        uuid = (await self.get(namespace, ref)).uuid if ref else ""
        return self.hub.subscribe("" if namespace == SYSTEM else namespace, uuid)
