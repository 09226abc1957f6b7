"""Choosing a node for an instance: pure functions over node capacity and neighbours.

Order, as Shaken Fist's scheduler does it: nodes that are not ``created``
(disabled, draining, reconnecting, missing, deleted) are skipped, the
affinity's hard constraints rule nodes out, capacity rules nodes out, then
the survivors are ranked by affinity score and, on a tie, by free memory.

Affinity comes from the new instance's ``affinity`` metadata and is scored
against the ``tags`` of the caller's own instances already on each node
(``neighbours``). Two shapes (``validation.check_affinity``):

* weighted, ``{"web": -10, "cache": 5}``: a node scores the sum, over its
  neighbours and their tags, of the weight of each tag (a soft preference);
* constraints, ``{"require_with_tag": [...], "require_without_tag": [...],
  "prefer_with_tag": [...], "prefer_without_tag": [...]}``: the ``require_*``
  lists are hard (a node hosting no neighbour with one of the tags, or one
  with one of them, cannot take the instance; if no node is left the create
  is refused with FailedPrecondition naming the constraint), the
  ``prefer_*`` lists score +1 / -1 per matching tag per neighbour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import FailedPrecondition, ResourceExhausted
from controlplane.nodestate import refusal as state_refusal

# node name -> the tag lists of the caller's instances on it
Neighbours = Mapping[str, Sequence[Sequence[str]]]


@dataclass(frozen=True)
class Capacity:
    """One connected node's size and what its instances already use."""

    name: str
    cpus: int
    memory_mb: int
    used_cpus: int = 0
    used_memory_mb: int = 0
    # Its controlplane.nodestate state: only created nodes take new instances.
    state: str = "created"


@dataclass(frozen=True)
class Affinity:
    """An affinity specification in one form: tag weights plus hard tag lists."""

    weights: Mapping[str, int] = field(default_factory=dict)
    require_with: tuple[str, ...] = ()
    require_without: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> Affinity:
        """From a validated ``affinity`` metadata value (either shape)."""
        spec = spec or {}
        constraint_keys = (
            "require_with_tag",
            "require_without_tag",
            "prefer_with_tag",
            "prefer_without_tag",
        )
        if not any(k in spec for k in constraint_keys):
            return cls(weights={str(k): int(v) for k, v in spec.items() if int(v)})
        weights: dict[str, int] = {}
        for tag in spec.get("prefer_with_tag", ()):
            weights[tag] = weights.get(tag, 0) + 1
        for tag in spec.get("prefer_without_tag", ()):
            weights[tag] = weights.get(tag, 0) - 1
        return cls(
            weights={k: v for k, v in weights.items() if v},
            require_with=tuple(spec.get("require_with_tag", ())),
            require_without=tuple(spec.get("require_without_tag", ())),
        )

    @property
    def empty(self) -> bool:
        """Whether it asks for nothing at all."""
        return not (self.weights or self.require_with or self.require_without)

    def score(self, neighbours: Sequence[Sequence[str]]) -> int:
        """A node's score: the weights of its neighbours' tags, summed."""
        return sum(self.weights.get(tag, 0) for tags in neighbours for tag in set(tags))

    def refusal(self, neighbours: Sequence[Sequence[str]]) -> str:
        """Why the hard constraints rule a node out ("" if they do not)."""
        present = {tag for tags in neighbours for tag in tags}
        if self.require_with and not present.intersection(self.require_with):
            return f"hosts none of require_with_tag {list(self.require_with)}"
        clash = sorted(present.intersection(self.require_without))
        if clash:
            return f"hosts require_without_tag {clash}"
        return ""


@dataclass(frozen=True)
class Choice:
    """Where an instance goes, and the affinity scores of the nodes that could take it."""

    node: str
    scores: Mapping[str, int] = field(default_factory=dict)


def place(
    nodes: list[Capacity],
    cpus: int,
    memory_mb: int,
    cpu_ratio: float,
    ram_ratio: float,
    affinity: Affinity | None = None,
    neighbours: Neighbours | None = None,
) -> Choice:
    """The best node, or ResourceExhausted / FailedPrecondition saying why there is none."""
    if not nodes:
        raise ResourceExhausted("no node agent is connected to place the instance on")
    skipped = [f"{n.name} {state_refusal(n.state)}" for n in nodes if state_refusal(n.state)]
    nodes = [n for n in nodes if not state_refusal(n.state)]
    if not nodes:
        raise ResourceExhausted("no node takes new instances: " + "; ".join(skipped))
    affinity = affinity or Affinity()
    neighbours = neighbours or {}
    refused: list[str] = []
    allowed = []
    for node in nodes:
        why = affinity.refusal(neighbours.get(node.name, ()))
        if why:
            refused.append(f"{node.name} {why}")
        else:
            allowed.append(node)
    if not allowed:
        raise FailedPrecondition(
            "no node satisfies the instance's hard affinity: " + "; ".join(refused)
        )
    reasons: list[str] = []
    fits: list[tuple[int, float, str]] = []
    for node in allowed:
        free_cpus = node.cpus * cpu_ratio - node.used_cpus
        free_mem = node.memory_mb * ram_ratio - node.used_memory_mb
        if free_cpus < cpus:
            reasons.append(f"{node.name}: {free_cpus:g} vCPUs free, {cpus} asked")
        elif free_mem < memory_mb:
            reasons.append(f"{node.name}: {free_mem:g} MiB free, {memory_mb} asked")
        else:
            fits.append((affinity.score(neighbours.get(node.name, ())), free_mem, node.name))
    if not fits:
        reasons += [f"{r} (hard affinity)" for r in refused]
        reasons += skipped
        raise ResourceExhausted("no node has room: " + "; ".join(reasons))
    # Highest score, then most free memory, then the first listed.
    best = max(enumerate(fits), key=lambda item: (item[1][0], item[1][1], -item[0]))[1]
    return Choice(best[2], {name: score for score, _, name in fits})


def choose_node(
    nodes: list[Capacity],
    cpus: int,
    memory_mb: int,
    cpu_ratio: float,
    ram_ratio: float,
    affinity: Affinity | None = None,
    neighbours: Neighbours | None = None,
) -> str:
    """The name of the node place() picks."""
    return place(nodes, cpus, memory_mb, cpu_ratio, ram_ratio, affinity, neighbours).node
