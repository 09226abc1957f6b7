"""In-process fan-out of instance changes and new events to Watch streams.

The replica's changefeed (controlplane/changefeed.py) publishes here what
the store reports committed, through any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from controlplane.model import Event, Instance

Update = Instance | Event


@dataclass(eq=False)
class Subscription:
    """One watcher: what it wants to see and its queue of updates."""

    namespace: str
    instance_uuid: str = ""
    # None is no update: it wakes a reader to look at ``overflowed``.
    queue: asyncio.Queue[Update | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=10000)
    )
    overflowed: bool = False


class Hub:
    """Delivers each change to every matching subscription without blocking.

    A watcher that falls more than its queue's size behind is marked
    ``overflowed`` and stops receiving; its stream should end so the client
    can watch again and re-read.
    """

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, namespace: str, instance_uuid: str = "") -> Subscription:
        """Start receiving updates for a namespace ("" for all), or one instance in it."""
        sub = Subscription(namespace=namespace, instance_uuid=instance_uuid)
        self._subs.add(sub)
        return sub

    def __len__(self) -> int:
        """How many subscriptions there are."""
        return len(self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop receiving updates."""
        self._subs.discard(sub)

    def publish(self, namespace: str, update: Update) -> None:
        """Hand an instance change or event to every matching watcher."""
        uuid = update.uuid if isinstance(update, Instance) else update.object_uuid
        for sub in self._subs:
            if sub.overflowed or sub.namespace not in ("", namespace):
                continue
            if sub.instance_uuid and sub.instance_uuid != uuid:
                continue
            try:
                sub.queue.put_nowait(update)
            except asyncio.QueueFull:
                sub.overflowed = True

    def lose_all(self) -> int:
        """End every subscription as overflowed (changes may have been missed); how many."""
        for sub in self._subs:
            if sub.overflowed:
                continue
            sub.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):  # a full queue's reader is not waiting
                sub.queue.put_nowait(None)
        return len(self._subs)
