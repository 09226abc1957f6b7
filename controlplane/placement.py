"""Choosing a node for an instance: pure functions over node capacity figures."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.errors import ResourceExhausted


@dataclass(frozen=True)
class Capacity:
    """One connected node's size and what its instances already use."""

    name: str
    cpus: int
    memory_mb: int
    used_cpus: int = 0
    used_memory_mb: int = 0


def choose_node(
    nodes: list[Capacity], cpus: int, memory_mb: int, cpu_ratio: float, ram_ratio: float
) -> str:
    """The node with the most free memory that fits, or ResourceExhausted saying why."""
    if not nodes:
        raise ResourceExhausted("no node agent is connected to place the instance on")
    reasons: list[str] = []
    best: tuple[float, str] | None = None
    for node in nodes:
        free_cpus = node.cpus * cpu_ratio - node.used_cpus
        free_mem = node.memory_mb * ram_ratio - node.used_memory_mb
        if free_cpus < cpus:
            reasons.append(f"{node.name}: {free_cpus:g} vCPUs free, {cpus} asked")
        elif free_mem < memory_mb:
            reasons.append(f"{node.name}: {free_mem:g} MiB free, {memory_mb} asked")
        elif best is None or free_mem > best[0]:
            best = (free_mem, node.name)
    if best is None:
        raise ResourceExhausted("no node has room: " + "; ".join(reasons))
    return best[1]
