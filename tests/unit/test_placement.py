"""Placement: the node with the most free memory that fits, or a reason why none does."""

from __future__ import annotations

import pytest

from controlplane.errors import ResourceExhausted
from controlplane.placement import Capacity, choose_node


def test_picks_most_free_memory() -> None:
    """Among fitting nodes, the one with the most free memory wins."""
    nodes = [Capacity("a", 4, 4096, 0, 3000), Capacity("b", 4, 4096, 0, 1000)]
    assert choose_node(nodes, 1, 512, 1.0, 1.0) == "b"


def test_overcommit_ratios_apply() -> None:
    """CPU and RAM ratios scale what a node offers."""
    nodes = [Capacity("a", 2, 1024, 2, 1024)]
    assert choose_node(nodes, 1, 512, 2.0, 1.5) == "a"


def test_no_nodes_says_so() -> None:
    """With no node, the error says none is connected."""
    with pytest.raises(ResourceExhausted, match="no node agent is connected"):
        choose_node([], 1, 512, 1.0, 1.0)


def test_reasons_name_each_node() -> None:
    """When nothing fits, the error names each node and what it lacks."""
    nodes = [Capacity("a", 1, 4096), Capacity("b", 8, 256)]
    with pytest.raises(ResourceExhausted) as info:
        choose_node(nodes, 2, 512, 1.0, 1.0)
    assert "a: 1 vCPUs free, 2 asked" in str(info.value)
    assert "b: 256 MiB free, 512 asked" in str(info.value)
