"""Node use cases: what streams do to a node's state, and what administrators may do.

Every change of a node's state goes through ``_change``: it asks the pure
table (controlplane.nodestate) where the event leads, writes the record with
compare-and-set in the batch that logs the node's event (``node:<name>``),
and tells the registry, whose capacities placement reads. Stream ends turn
the node's created instances' power ``unknown`` (the reconciler's
``node-lost``); the node's next inventory converges them again. ``run``
moves nodes reconnecting past ``MINICLOUD_NODE_MISSING_AFTER`` to missing.
Only the system namespace may read or steer nodes (PermissionDenied).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from common.nodewire.power import STOPPED
from controlplane import lifecycle, nodestate
from controlplane.errors import Busy, FailedPrecondition, MiniCloudError, NotFound
from controlplane.model import Event, Instance, Node, node_object
from controlplane.nodes import NodeRegistry
from controlplane.reconciler import Reconciler
from controlplane.services.events import read_events
from controlplane.services.moves import MoveService
from controlplane.services.namespaces import require_system
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Op
from controlplane.store.records import Records

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeView:
    """A node as administrators see it: its record, its stream and what it holds."""

    node: Node
    connected: bool
    last_heartbeat: float
    committed_cpus: int = 0
    committed_memory_mb: int = 0
    committed_disk_gb: int = 0
    instance_count: int = 0
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True)
class DrainReport:
    """What draining a node has to deal with: running instances block, stopped ones move."""

    node: NodeView
    blocking: tuple[Instance, ...] = ()
    to_move: tuple[Instance, ...] = ()


@dataclass
class NodeService:
    """Node states, driven by node streams, a deadline and administrators."""

    records: Records
    nodes: NodeRegistry
    reconciler: Reconciler
    clock: Callable[[], float]
    missing_after: float
    fqdn: str
    # Moves stopped instances off a draining node (None: a drain only reports).
    moves: MoveService | None = None
    # Set while the control plane stops: streams it ends are not the nodes' doing.
    stopping: bool = False
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def event(self, name: str, message: str, kind: str = "mutate", **extra: Any) -> Event:
        """A node event stamped now."""
        return Event(node_object(name), kind, message, self.clock(), self.fqdn, extra=extra)

    # -- what streams and time do ---------------------------------------------

    async def load(self) -> None:
        """At start-up: every node the store knows, none connected yet.

        A node recorded as created is reconnecting from now on (its instances keep
        the power state last observed until it is back or missing).
        """
        for node in await self.records.list_nodes():
            if node.state == nodestate.CREATED and not self.nodes.connected(node.name):
                now = self.clock()
                node = await self._write(
                    node,
                    node.with_changes(
                        state=nodestate.RECONNECTING, state_updated_at=now, disconnected_at=now
                    ),
                    [self.event(node.name, "control plane started; waiting for the node")],
                )
            self.nodes.states[node.name] = node.state

    async def connected(self, registered: Node) -> Node:
        """A node's agent opened a stream: record what it registered and its new state."""
        name = registered.name
        async with self._lock(name):

            async def attempt() -> Node:
                old = await self.records.get_node(name)
                now = self.clock()
                state = nodestate.decide(old.state if old else nodestate.CREATED, "connect")
                new = registered.with_changes(
                    state=state,
                    state_updated_at=now
                    if old is None or old.state != state
                    else old.state_updated_at,
                    first_seen=old.first_seen if old and old.first_seen else now,
                    last_seen=now,
                    disconnected_at=0.0,
                    metadata=old.metadata if old else {},
                )
                events = [self.event(name, "node connected", "status", address=new.address)]
                if old is not None and old.state != state:
                    events.append(self._state_event(name, old.state, state))
                await self.records.update_node(old, new, events)
                return new

            node = await retry_on_conflict(attempt, f"node {name}")
            self.nodes.states[name] = node.state
            return node

    async def disconnected(self, name: str) -> None:
        """A node's current stream ended: it is away, and so are its instances."""
        if self.stopping or self.nodes.connected(name):
            return  # or it is connected to another replica already
        async with self._lock(name):
            try:
                node = await self._change(name, "disconnect", "status", "node disconnected")
            except (MiniCloudError, nodestate.Refused) as exc:
                log.warning("cannot record a node's disconnection", node=name, error=str(exc))
                return
            await self._instances_away(node)

    async def lost(self, name: str) -> None:
        """Another replica's record of the node's stream went and none replaced it.

        That replica ended the stream (and recorded the node away itself) or died
        (then nobody did): a node still recorded as connected is away from now on.
        """
        node = await self.records.get_node(name)
        if node is None or nodestate.TABLE.get((node.state, "disconnect")) in (None, node.state):
            return
        await self.disconnected(name)

    async def check_missing(self) -> list[str]:
        """Move nodes reconnecting past the deadline to missing; their names."""
        now = self.clock()
        moved = []
        for node in await self.records.list_nodes():
            if node.state != nodestate.RECONNECTING:
                continue
            if self.nodes.connected(node.name):
                # Its stream is live (on some replica), but it is recorded reconnecting: a
                # replica that started while the stream was being recorded guessed wrong.
                async with self._lock(node.name):
                    with contextlib.suppress(MiniCloudError, nodestate.Refused):
                        await self._change(
                            node.name,
                            nodestate.NodeEvent.CONNECT,
                            "status",
                            "node connected (its stream is live)",
                        )
                continue
            if now - node.disconnected_at < self.missing_after:
                continue
            async with self._lock(node.name):
                try:
                    node = await self._change(
                        node.name,
                        "deadline",
                        "status",
                        f"node missing: no stream for {self.missing_after:g} s",
                    )
                except (MiniCloudError, nodestate.Refused):
                    continue
                await self._instances_away(node)
                moved.append(node.name)
        return moved

    async def run(self) -> None:
        """Check for missing nodes a few times per deadline, until cancelled."""
        interval = max(0.05, min(self.missing_after / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_missing()
            except Exception:
                log.exception("checking for missing nodes failed; trying again")

    async def _instances_away(self, node: Node) -> None:
        """The node is out of reach: its created instances' power is unknown."""
        for uuid in await self.records.uuids_on_node(node.name):
            if self.nodes.connected(node.name):
                return  # back already: its inventory converges them
            instance = await self.records.get_instance(uuid)
            if instance is None or instance.state != lifecycle.CREATED:
                continue
            if instance.power_state == lifecycle.UNKNOWN_POWER:
                continue
            try:
                await self.reconciler.transition(
                    uuid, "node-lost", reason=f"node {node.name} is {node.state}", current=instance
                )
            except MiniCloudError as exc:
                log.warning("cannot mark an instance unknown", uuid=uuid, error=str(exc))

    # -- what administrators do -----------------------------------------------

    async def list_all(self, caller: str) -> list[NodeView]:
        """Every node that ever registered (deleted ones too), by name."""
        require_system(caller, "list nodes")
        found = sorted(await self.records.list_nodes(), key=lambda n: n.name)
        return [self._view(n, count=len(await self.records.uuids_on_node(n.name))) for n in found]

    async def get(self, caller: str, name: str) -> NodeView:
        """One node with what it holds."""
        require_system(caller, "read nodes")
        node = await self._find(name)
        instances = await self._instances_on(node.name)
        return self._view(node, instances)

    async def disable(self, caller: str, name: str) -> NodeView:
        """Place nothing new on the node (what it runs keeps running)."""
        require_system(caller, "disable nodes")
        await self._admin(name, "disable", "disable requested")
        return await self.get(caller, name)

    async def enable(self, caller: str, name: str) -> NodeView:
        """Let placement use the node again (back to its connectivity's state)."""
        require_system(caller, "enable nodes")
        async with self._lock(name):
            node = await self._admin_locked(name, "enable", "enable requested")
            if not self.nodes.connected(node.name):
                await self._change(name, "disconnect", "status", "node is not connected")
        return await self.get(caller, name)

    async def drain(self, caller: str, name: str) -> DrainReport:
        """Mark the node draining (placement skips it), move its stopped instances off it.

        Each stopped instance is moved to a node placement chooses (its disks
        copied through the BlobService, see ``services.moves``). Running
        instances block the drain, for the operator to stop or delete; stopped
        ones whose move failed are still listed as to move. When nothing is
        left the node is ``drained``: it stays disabled and may be deleted.
        """
        require_system(caller, "drain nodes")
        await self._admin(name, "drain", "drain requested")
        if self.moves is not None:
            await self.moves.evacuate(name)
        view = await self.get(caller, name)
        live = [i for i in view.instances if i.state != lifecycle.DELETED]
        to_move = tuple(i for i in live if i.power_state in STOPPED)
        blocking = tuple(i for i in live if i.power_state not in STOPPED)
        if not live and self.moves is not None:
            await self.records.add_events("", [self.event(name, "drained", "audit")])
            await self._change(name, "drained", "mutate")
            view = await self.get(caller, name)
        return DrainReport(view, blocking, to_move)

    async def delete(self, caller: str, name: str) -> NodeView:
        """Remove a missing or empty node; what is left on it goes to error."""
        require_system(caller, "delete nodes")
        async with self._lock(name):
            node = await self._find(name)
            if node.state == nodestate.DELETED:
                return self._view(node)
            instances = await self._instances_on(name)
            if instances and node.state != nodestate.MISSING:
                raise FailedPrecondition(
                    f"node {name} is {node.state} and has {len(instances)} instance(s); "
                    "only a missing node or one without instances may be deleted (drain it first)"
                )
            await self.records.add_events("", [self.event(name, "delete requested", "audit")])
            node = await self._change(name, "delete", "mutate")
            for instance in instances:
                await self._orphan(instance, f"node {name} was removed")
        return await self.get(caller, name)

    async def events(
        self, caller: str, name: str, event_type: str = "", limit: int = 100
    ) -> list[Event]:
        """A node's events, newest first."""
        require_system(caller, "read node events")
        node = await self._find(name)
        return await read_events(self.records, node_object(node.name), event_type, limit)

    # -- helpers ----------------------------------------------------------------

    async def _find(self, name: str) -> Node:
        node = await self.records.get_node(name) if name else None
        if node is None:
            raise NotFound(f"node {name!r} not found")
        return node

    async def _instances_on(self, name: str) -> list[Instance]:
        found = []
        for uuid in await self.records.uuids_on_node(name):
            instance = await self.records.get_instance(uuid)
            if instance is not None and instance.state != lifecycle.DELETED:
                found.append(instance)
        return sorted(found, key=lambda i: i.created_at)

    def _view(
        self, node: Node, instances: list[Instance] | None = None, count: int | None = None
    ) -> NodeView:
        session = self.nodes.sessions.get(node.name)
        elsewhere = self.nodes.presence.elsewhere(node.name) if self.nodes.presence else None
        cpus, memory = self.nodes.committed(node.name)
        disk = sum(d.size_gb for i in instances or () for d in i.spec.disks)
        return NodeView(
            node=node,
            connected=session is not None or elsewhere is not None,
            last_heartbeat=session.last_seen if session is not None else node.last_seen,
            committed_cpus=cpus,
            committed_memory_mb=memory,
            committed_disk_gb=disk,
            instance_count=len(instances or ()) if count is None else count,
            instances=tuple(instances or ()),
        )

    async def _admin(self, name: str, event: str, message: str) -> Node:
        async with self._lock(name):
            return await self._admin_locked(name, event, message)

    async def _admin_locked(self, name: str, event: str, message: str) -> Node:
        await self._find(name)
        await self.records.add_events("", [self.event(name, message, "audit")])
        return await self._change(name, event, "mutate")

    def _state_event(self, name: str, old: str, new: str) -> Event:
        return self.event(name, f"state changed from {old} to {new}", old=old, new=new)

    async def _change(self, name: str, event: str, kind: str, message: str = "") -> Node:
        """Apply one table event to a node's record (FailedPrecondition if refused)."""

        async def attempt() -> Node:
            old = await self._find(name)
            try:
                state = nodestate.decide(old.state, event)
            except nodestate.Refused as exc:
                raise FailedPrecondition(f"node {name}: {exc}") from exc
            now = self.clock()
            changes: dict[str, Any] = {}
            events = [self.event(name, message, kind)] if message else []
            if state != old.state:
                changes.update(state=state, state_updated_at=now)
                events.append(self._state_event(name, old.state, state))
            if event == "disconnect":
                changes.update(last_seen=now, disconnected_at=old.disconnected_at or now)
            new = old.with_changes(**changes)
            if new == old and not events:
                return old
            return await self._write(old, new, events)

        node = await retry_on_conflict(attempt, f"node {name}")
        self.nodes.states[name] = node.state
        return node

    async def _write(
        self, old: Node, new: Node, events: list[Event], extra: list[Op] | None = None
    ) -> Node:
        return await self.records.update_node(old, new, events, extra or ())

    async def _orphan(self, instance: Instance, message: str) -> None:
        """An instance whose node was removed: error, unplaced, its addresses released."""
        uuid = instance.uuid
        try:
            if instance.state == lifecycle.DELETE_WAIT:
                await self.reconciler.transition(uuid, "destroyed", reason=message)
                return
            if instance.state in lifecycle.PHASE_ERROR:
                instance = await self.reconciler.transition(uuid, "fail", error=message)
            if instance.state in lifecycle.PHASE_ERROR.values():
                instance = await self.reconciler.transition(uuid, "settle-error")
        except MiniCloudError as exc:
            log.warning("cannot move an instance to error", uuid=uuid, error=str(exc))

        async def attempt() -> None:
            current = await self.records.get_instance(uuid)
            if current is None or current.state == lifecycle.DELETED or not current.node:
                return
            extra: list[Op] = []
            events = [self.reconciler.event(uuid, message, "status", node=current.node)]
            hooks = self.reconciler.hooks
            if hooks is not None and current.interfaces:
                extra, more = await hooks.release_ops(current)
                events += more
            new = current.with_changes(error_message=message, node="", interfaces=())
            await self.records.update_instance(current, new, events, extra)
            self.nodes.release_usage(current)

        try:
            await retry_on_conflict(attempt, f"instance {uuid}")
        except Busy as exc:
            log.warning(
                "cannot detach an instance from its removed node", uuid=uuid, error=str(exc)
            )
