"""Commands for nodes whose stream another replica holds, queued in the store.

A replica sending a command to a node connected elsewhere writes it to the
node's queue, ``nodecmd/<node>/<command id>``: the node stream's own
``Command`` message, serialised (common/nodewire/convert.py). The replica
holding the node's stream follows ``nodecmd/``, delivers each command of its
nodes once, and when the node answers writes ``noderesult/<command id>``
(the stream's ``CommandResult``) and deletes the queued command in one
batch. The sender follows ``noderesult/``, resolves its waiter and deletes
the result. A command still queued when its node's replica dies stays
queued: the replica the node reconnects to delivers it (the node runs a
command id at most once). Results nobody collected (their sender died, or
gave up waiting) are swept: one still there a whole sweep interval after it
was first seen is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from common.nodewire.commands import Delivery
from common.nodewire.convert import delivery_to_bytes, result_to_bytes
from common.nodewire.messages import Result
from controlplane.store.protocol import Change, Conflict, Delete, Item, Put, Store, StoreError

log = structlog.get_logger(__name__)

COMMANDS = b"nodecmd/"
RESULTS = b"noderesult/"
# Seconds between sweeps of results nobody collected.
SWEEP_INTERVAL = 60.0


def command_key(node: str, command_id: str) -> bytes:
    """Where a command queued for a node is stored."""
    return COMMANDS + f"{node}/{command_id}".encode()


def result_key(command_id: str) -> bytes:
    """Where a queued command's result is stored."""
    return RESULTS + command_id.encode()


class CommandQueue:
    """Per-node command queues and their results, in the store."""

    def __init__(self, store: Store, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.store = store
        self.sweep_interval = sweep_interval
        # (node, command id, the serialised command): a command was queued (or read).
        self.on_command: Callable[[str, str, bytes], None] | None = None
        # (command id, the serialised result): a result was written.
        self.on_result: Callable[[str, bytes], None] | None = None

    async def enqueue(self, node: str, delivery: Delivery) -> None:
        """Queue a command for a node."""
        key = command_key(node, delivery.command.command_id)
        await self.store.commit([Put(key, delivery_to_bytes(delivery))])

    async def queued(self, node: str) -> list[tuple[str, bytes]]:
        """The commands queued for a node: (command id, serialised command)."""
        prefix = command_key(node, "")
        return [(i.key[len(prefix) :].decode(), i.value) for i in await self.store.scan(prefix)]

    async def finish(self, node: str, result: Result) -> None:
        """A queued command ran: its result for the sender, and the command off the queue."""
        cid = result.command_id
        await self.store.commit(
            [Put(result_key(cid), result_to_bytes(result)), Delete(command_key(node, cid))]
        )

    async def collected(self, command_id: str) -> None:
        """The sender has its result: delete it."""
        await self.store.commit([Delete(result_key(command_id))])

    # -- following the store ---------------------------------------------------

    def reset_commands(self, items: list[Item]) -> None:
        """Every queued command, as read."""
        self.apply_commands([Change(i.key, i) for i in items])

    def apply_commands(self, changes: list[Change]) -> None:
        """Commands queued (or taken off a queue) by any replica."""
        if self.on_command is None:
            return
        for change in changes:
            if change.item is None:
                continue
            node, _, cid = change.key[len(COMMANDS) :].decode().partition("/")
            self.on_command(node, cid, change.item.value)

    def reset_results(self, items: list[Item]) -> None:
        """Every result waiting, as read."""
        self.apply_results([Change(i.key, i) for i in items])

    def apply_results(self, changes: list[Change]) -> None:
        """Results written (or collected) by any replica."""
        if self.on_result is None:
            return
        for change in changes:
            if change.item is not None:
                self.on_result(change.key[len(RESULTS) :].decode(), change.item.value)

    async def sweep(self) -> None:
        """Delete results nobody collected within a sweep interval, until cancelled."""
        seen: dict[bytes, int] = {}
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                items = await self.store.scan(RESULTS)
                for item in items:
                    if seen.get(item.key) == item.version:
                        with contextlib.suppress(Conflict):  # collected meanwhile
                            await self.store.commit([Delete(item.key, expect=item.version)])
                seen = {i.key: i.version for i in items}
            except StoreError as exc:
                log.info("cannot sweep uncollected node results", error=str(exc))
