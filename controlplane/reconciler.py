"""Applies lifecycle decisions: writes records, logs events, sends node commands.

Everything that changes an instance goes through ``transition``: it asks the
pure lifecycle what an event leads to, commits the change with
compare-and-set (re-reading on conflict), then performs the decision's
actions. Node reports (results, observations, inventories) arrive here too,
so the control plane converges on what the nodes really have.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from common.nodewire.commands import Command, CreateDomain, DestroyDomain, PowerDomain
from common.nodewire.messages import Observation, Result
from common.nodewire.power import PowerAction
from common.tasks import Tasks
from controlplane import lifecycle
from controlplane.domainreq import domain_request
from controlplane.errors import Busy, FailedPrecondition, NotFound
from controlplane.model import Event, Instance
from controlplane.nodes import NodeRegistry, Session
from controlplane.store.occ import first_then, retry_on_conflict
from controlplane.store.protocol import Op
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
MAX_CREATE_ATTEMPTS = 3


class InstanceHooks(Protocol):
    """What other parts (networks) do as instances change and nodes connect."""

    async def release_ops(self, instance: Instance) -> tuple[list[Op], list[Event]]:
        """Operations and events to commit with an instance's deletion."""
        ...

    async def instance_changed(self, old: Instance, new: Instance) -> None:
        """Called after each committed state change."""
        ...

    async def node_connected(self, node: str, present: Iterable[str]) -> None:
        """A node (re)connected; present: the networks it has."""
        ...


class Reconciler:
    """Drives instances through the lifecycle and keeps nodes in step."""

    def __init__(
        self,
        records: Records,
        nodes: NodeRegistry,
        fqdn: str,
        clock: Clock,
        tasks: Tasks | None = None,
    ) -> None:
        self.hooks: InstanceHooks | None = None
        self.records = records
        self.nodes = nodes
        self.fqdn = fqdn
        self.clock = clock
        self._create_attempts: dict[str, int] = {}
        self.tasks = tasks if tasks is not None else Tasks()

    def event(self, uuid: str, message: str, kind: str = "mutate", **extra: Any) -> Event:
        """An event stamped now, from this control plane."""
        return Event(uuid, kind, message, self.clock(), self.fqdn, extra=extra)

    async def transition(
        self,
        uuid: str,
        event: str,
        *,
        observed_power: str = "",
        error: str = "",
        reason: str = "",
        current: Instance | None = None,
    ) -> Instance:
        """Apply one lifecycle event to an instance and perform its actions.

        ``current`` saves a read when the caller has just read the instance; a
        stale copy only costs a retry.
        """
        instance, _ = await self.transition_sent(
            uuid,
            event,
            observed_power=observed_power,
            error=error,
            reason=reason,
            current=current,
        )
        return instance

    async def transition_sent(
        self,
        uuid: str,
        event: str,
        *,
        observed_power: str = "",
        error: str = "",
        reason: str = "",
        current: Instance | None = None,
    ) -> tuple[Instance, list[asyncio.Future[Result]]]:
        """As transition, also returning the futures of the commands it sent."""
        read = first_then(current, lambda: self.records.get_instance(uuid))

        async def attempt() -> tuple[Instance, Instance, lifecycle.Decision]:
            instance = await read()
            if instance is None:
                raise NotFound(f"instance {uuid} not found")
            view = lifecycle.View(instance.state, instance.power_state, bool(instance.node))
            try:
                decision = lifecycle.decide(view, event, observed_power)
            except lifecycle.Refused as exc:
                raise FailedPrecondition(str(exc)) from exc
            new, events = self._apply(instance, decision, error, reason)
            extra: list[Op] = []
            deleting = new.state == lifecycle.DELETED and instance.state != lifecycle.DELETED
            if deleting and self.hooks is not None:
                extra, more = await self.hooks.release_ops(instance)
                events += more
            if not (deleting and instance.node):
                stored = await self.records.update_instance(instance, new, events, extra)
                return instance, stored, decision
            # The node's room goes back in the same batch (controlplane/usage.py).
            spec, usage = instance.spec, self.nodes.usage
            claim = await usage.claim(instance.node, -spec.cpus, -spec.memory)
            try:
                stored = await self.records.update_instance(
                    instance, new, events, [*extra, claim.op]
                )
            except BaseException:
                usage.settle(claim, False)
                raise
            usage.settle(claim, True)
            return instance, stored, decision

        instance, stored, decision = await retry_on_conflict(attempt, f"instance {uuid}")
        if self.hooks is not None and stored.state != instance.state:
            await self.hooks.instance_changed(instance, stored)
        return stored, self.perform(stored, decision.actions)

    def _apply(
        self, old: Instance, decision: lifecycle.Decision, error: str, reason: str
    ) -> tuple[Instance, list[Event]]:
        now = self.clock()
        changes: dict[str, Any] = {}
        events: list[Event] = []
        if decision.state != old.state:
            changes["state"] = decision.state
            changes["state_updated_at"] = now
            message = f"state changed from {old.state} to {decision.state}"
            events.append(self.event(old.uuid, message, old=old.state, new=decision.state))
        if decision.power_state != old.power_state:
            changes["power_state"] = decision.power_state
            message = f"power state changed from {old.power_state} to {decision.power_state}"
            if reason:
                message += f" ({reason})"
            events.append(
                self.event(old.uuid, message, old=old.power_state, new=decision.power_state)
            )
        if error:
            changes["error_message"] = error
            events.append(self.event(old.uuid, f"error: {error}", kind="status"))
        if decision.actions:
            changes["command_seq"] = old.command_seq + 1
        return old.with_changes(**changes), events

    def perform(self, instance: Instance, actions: tuple[str, ...]) -> list[asyncio.Future[Result]]:
        """Send the commands a decision asked for (nodes that are away catch up later)."""
        futures = []
        for action in actions:
            command = self.command_for(instance, action)
            if self.nodes.connected(instance.node):
                futures.append(self.nodes.send(instance.node, command))
        return futures

    def command_for(self, instance: Instance, action: str) -> Command:
        """The node command that performs a lifecycle action."""
        command_id = f"{instance.uuid}/{instance.command_seq}"
        if action == "create-domain":
            return CreateDomain(command_id, instance.uuid, domain_request(instance))
        if action == "destroy-domain":
            return DestroyDomain(command_id, instance.uuid)
        power = PowerAction(action.removeprefix("power-"))
        if power == PowerAction.ON:
            # Powering on rebuilds the config drive from the instance as it is now.
            return PowerDomain(command_id, instance.uuid, power, domain_request(instance))
        return PowerDomain(command_id, instance.uuid, power)

    async def on_result(self, session: Session, result: Result) -> None:
        """A node answered a command: move the instance on, then wake any waiter."""
        try:
            await self._handle_result(session, result)
        except Exception:
            log.exception("cannot apply command result", command=result.command_id)
        self.nodes.resolve(session, result)

    async def _handle_result(self, session: Session, result: Result) -> None:
        if result.command_id.startswith("net/"):
            if not result.ok:
                log.warning(
                    "network command failed",
                    node=session.node.name,
                    network=result.instance_uuid,
                    error=result.error,
                )
                message = f"network command failed on node {session.node.name}: {result.error}"
                await self.records.add_events(
                    "", [self.event(result.instance_uuid, message, "status")]
                )
            return
        instance = await self.records.get_instance(result.instance_uuid)
        if instance is None:
            return
        if result.observation is not None and instance.node == session.node.name:
            instance = await self.record_ports(instance, result.observation)
        if instance.state == lifecycle.CREATING:
            if result.ok:
                self._create_attempts.pop(instance.uuid, None)
                await self.transition(instance.uuid, "created", current=instance)
            else:
                await self._create_failed(session, instance, result)
            return
        if instance.state == lifecycle.DELETE_WAIT:
            if result.ok:
                await self.transition(
                    instance.uuid, "destroyed", reason="domain removed", current=instance
                )
            else:
                await self.records.add_events(
                    instance.namespace,
                    [self.event(instance.uuid, f"delete failed: {result.error}", "status")],
                )
            return
        if result.observation is not None:
            await self.on_observation(session, result.observation)

    async def _create_failed(self, session: Session, instance: Instance, result: Result) -> None:
        attempts = self._create_attempts.get(instance.uuid, 0) + 1
        if result.retryable and attempts < MAX_CREATE_ATTEMPTS:
            self._create_attempts[instance.uuid] = attempts
            await self.records.add_events(
                instance.namespace,
                [self.event(instance.uuid, f"create failed, retrying: {result.error}", "status")],
            )
            self._later(2.0 * attempts, self._resend, session.node.name, instance.uuid)
            return
        self._create_attempts.pop(instance.uuid, None)
        await self.transition(instance.uuid, "fail", error=result.error)
        await self.transition(instance.uuid, "settle-error")

    async def _resend(self, node: str, uuid: str) -> None:
        instance = await self.records.get_instance(uuid)
        if instance is not None and instance.state == lifecycle.CREATING:
            self.perform(instance, ("create-domain",))

    def _later(self, delay: float, func: Callable[[str, str], Any], *args: str) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await func(*args)

        self.tasks.spawn(run(), name=f"later {func.__name__}")

    async def on_observation(self, session: Session, obs: Observation) -> None:
        """A node saw a domain change: record the power state it really has."""
        instance = await self.records.get_instance(obs.instance_uuid)
        if instance is None or instance.state == lifecycle.DELETED:
            if obs.exists:
                self._destroy_orphan(session, obs)
            return
        if instance.node != session.node.name:
            return
        instance = await self.record_ports(instance, obs)
        if not obs.exists:
            if instance.state == lifecycle.CREATED:
                await self.transition(
                    instance.uuid, "fail", error=f"domain disappeared from node {instance.node}"
                )
                await self.transition(instance.uuid, "settle-error")
            return
        if (
            instance.state in lifecycle.ON_NODE
            and instance.state != lifecycle.CREATING
            and obs.power_state != instance.power_state
        ):
            await self.transition(
                instance.uuid,
                "observed",
                observed_power=obs.power_state,
                reason=obs.reason,
                current=instance,
            )

    async def record_ports(self, instance: Instance, obs: Observation) -> Instance:
        """Keep the console ports and display password a node reported for an instance."""
        read = first_then(instance, lambda: self.records.get_instance(instance.uuid))

        async def attempt() -> Instance:
            latest = await read()
            if latest is None:
                return instance
            if not obs.exists or not obs.console_port or latest.state == lifecycle.DELETED:
                return latest
            seen = (obs.console_port, obs.vdi_port, obs.vdi_tls_port, obs.vdi_password)
            known = (latest.console_port, latest.vdi_port, latest.vdi_tls_port, latest.vdi_password)
            if seen == known:
                return latest
            new = latest.with_changes(
                console_port=obs.console_port,
                vdi_port=obs.vdi_port,
                vdi_tls_port=obs.vdi_tls_port,
                vdi_password=obs.vdi_password,
            )
            return await self.records.update_instance(latest, new, [])

        try:
            return await retry_on_conflict(attempt, f"instance {instance.uuid}")
        except Busy:
            return instance

    async def on_inventory(
        self, session: Session, domains: list[Observation], networks: Iterable[str] = ()
    ) -> None:
        """A node (re)connected and listed its domains and networks: converge both ways."""
        seen = {d.instance_uuid: d for d in domains}
        node = session.node.name
        if self.hooks is not None:
            # Networks first: creates resent below need them on the node.
            await self.hooks.node_connected(node, networks)
        for uuid in await self.records.uuids_on_node(node):
            instance = await self.records.get_instance(uuid)
            if instance is None:
                continue
            if instance.state == lifecycle.CREATING:
                self.perform(instance, ("create-domain",))
            elif instance.state == lifecycle.DELETE_WAIT:
                self.perform(instance, ("destroy-domain",))
            else:
                await self.on_observation(session, seen.get(uuid, Observation(uuid, False)))
            seen.pop(uuid, None)
        for obs in seen.values():
            self._destroy_orphan(session, obs)

    def _destroy_orphan(self, session: Session, obs: Observation) -> None:
        uuid = obs.instance_uuid
        if obs.legacy:
            # Made before domains named their cluster: it may be another cluster's.
            log.warning(
                "leaving alone a domain that records no cluster and is unknown here",
                node=session.node.name,
                uuid=uuid,
            )
            return
        log.info("removing domain unknown to the control plane", node=session.node.name, uuid=uuid)
        self.nodes.send(session.node.name, DestroyDomain(f"{uuid}/orphan", uuid))

    async def on_node_event(self, session: Session, event: Event) -> None:
        """A node reported progress or a fact about one of its instances."""
        instance = await self.records.get_instance(event.object_uuid)
        if instance is not None and instance.node == session.node.name:
            if not event.fqdn:
                event = dataclasses.replace(event, fqdn=session.node.name)
            await self.records.add_events(instance.namespace, [event])

    async def on_agent_status(
        self, session: Session, uuid: str, agent_state: str, boot_time: float
    ) -> Instance | None:
        """A node reported its in-guest agent's state: record it (and any reboot)."""

        async def attempt() -> Instance | None:
            instance = await self.records.get_instance(uuid)
            if instance is None or instance.node != session.node.name:
                return None
            if instance.state == lifecycle.DELETED:
                return instance
            boot = boot_time or instance.agent_system_boot_time
            if agent_state == instance.agent_state and boot == instance.agent_system_boot_time:
                return instance
            events = []
            if agent_state != instance.agent_state:
                events.append(
                    self.event(
                        uuid,
                        f"agent state changed to {agent_state}",
                        "status",
                        old=instance.agent_state,
                        new=agent_state,
                    )
                )
            if (
                boot_time
                and instance.agent_system_boot_time
                and (abs(boot_time - instance.agent_system_boot_time) > 1)
            ):
                events.append(
                    self.event(
                        uuid,
                        "reboot detected",
                        "status",
                        old=instance.agent_system_boot_time,
                        new=boot_time,
                    )
                )
            new = instance.with_changes(agent_state=agent_state, agent_system_boot_time=boot)
            return await self.records.update_instance(instance, new, events)

        try:
            return await retry_on_conflict(attempt, f"instance {uuid}")
        except Busy:
            return None
