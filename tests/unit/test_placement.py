"""Placement: hard affinity and room rule nodes out; affinity, then free memory, ranks the rest."""

from __future__ import annotations

import pytest

from controlplane.errors import FailedPrecondition, ResourceExhausted
from controlplane.placement import Affinity, Capacity, choose_node, place


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


def _two_nodes() -> list[Capacity]:
    return [Capacity("a", 8, 8192), Capacity("b", 8, 8192, 0, 1024)]


def test_affinity_outweighs_free_memory() -> None:
    """A node hosting instances with liked tags wins over one with more free memory."""
    affinity = Affinity.parse({"db": 10})
    neighbours = {"b": [["db"]]}
    choice = place(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours)
    assert choice.node == "b"
    assert choice.scores == {"a": 0, "b": 10}


def test_anti_affinity_avoids_tagged_neighbours() -> None:
    """A negative weight steers the instance away from nodes with that tag."""
    affinity = Affinity.parse({"web": -5})
    assert choose_node(_two_nodes(), 1, 512, 1.0, 1.0, affinity, {"a": [["web"]]}) == "b"


def test_scores_sum_over_neighbours_and_tags() -> None:
    """Each neighbour's tags add their weights; the highest total wins."""
    affinity = Affinity.parse({"web": -10, "cache": 4})
    neighbours = {"a": [["web"], ["cache"]], "b": [["cache"], ["cache", "other"]]}
    choice = place(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours)
    assert choice.scores == {"a": -6, "b": 8}
    assert choice.node == "b"


def test_prefer_lists_count_one_per_matching_neighbour() -> None:
    """prefer_with_tag / prefer_without_tag score +1 / -1 per matching neighbour."""
    affinity = Affinity.parse({"prefer_with_tag": ["web"], "prefer_without_tag": ["batch"]})
    neighbours = {"a": [["web"], ["web"], ["web"], ["batch"]], "b": [["web"]]}
    assert place(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours).scores == {"a": 2, "b": 1}


def test_require_with_tag_rules_out_nodes_without_it() -> None:
    """require_with_tag places only beside an instance carrying the tag."""
    affinity = Affinity.parse({"require_with_tag": ["db"]})
    neighbours = {"a": [["db"]]}
    assert choose_node(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours) == "a"


def test_require_without_tag_rules_out_nodes_with_it() -> None:
    """require_without_tag never places beside an instance carrying the tag."""
    affinity = Affinity.parse({"require_without_tag": ["db"]})
    neighbours = {"b": [["db", "x"]]}
    assert choose_node(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours) == "a"


def test_unsatisfiable_hard_affinity_is_refused_naming_it() -> None:
    """When no node meets a hard constraint, the create fails with FAILED_PRECONDITION."""
    affinity = Affinity.parse({"require_without_tag": ["db"]})
    neighbours = {"a": [["db"]], "b": [["db"]]}
    with pytest.raises(FailedPrecondition, match="hard affinity: a hosts require_without_tag"):
        place(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours)
    with pytest.raises(FailedPrecondition, match="none of require_with_tag"):
        place(_two_nodes(), 1, 512, 1.0, 1.0, Affinity.parse({"require_with_tag": ["x"]}), {})


def test_hard_affinity_node_without_room_is_resource_exhausted() -> None:
    """The only node meeting the constraint being full is a lack of room, with both reasons."""
    nodes = [Capacity("a", 8, 8192), Capacity("b", 1, 256)]
    affinity = Affinity.parse({"require_without_tag": ["db"]})
    with pytest.raises(ResourceExhausted) as info:
        place(nodes, 1, 512, 1.0, 1.0, affinity, {"a": [["db"]]})
    assert "b: 256 MiB free" in str(info.value)
    assert "a hosts require_without_tag" in str(info.value)


def test_affinity_never_places_where_there_is_no_room() -> None:
    """Weights rank only the nodes that fit."""
    nodes = [Capacity("a", 8, 8192), Capacity("b", 1, 256)]
    assert choose_node(nodes, 1, 512, 1.0, 1.0, Affinity.parse({"db": 100}), {"b": [["db"]]}) == "a"


def test_ties_keep_the_memory_rule() -> None:
    """Equal scores fall back to the most free memory."""
    affinity = Affinity.parse({"db": 5})
    neighbours = {"a": [["db"]], "b": [["db"]]}
    assert choose_node(_two_nodes(), 1, 512, 1.0, 1.0, affinity, neighbours) == "a"


@pytest.mark.parametrize("state", ["disabled", "draining", "reconnecting", "missing", "deleted"])
def test_nodes_not_created_are_skipped(state: str) -> None:
    """A node that is not created takes nothing new; the error names it and why."""
    nodes = [Capacity("n1", 8, 8192, state=state)]
    with pytest.raises(ResourceExhausted, match=f"no node takes new instances: n1 is {state}"):
        choose_node(nodes, 1, 512, 16.0, 1.5)
    both = [*nodes, Capacity("n2", 2, 1024)]
    assert choose_node(both, 1, 512, 16.0, 1.5) == "n2"


def test_skipped_nodes_are_named_when_the_rest_is_full() -> None:
    """When the created nodes are full, the refusal also names the skipped ones."""
    nodes = [Capacity("n1", 8, 8192, state="disabled"), Capacity("n2", 1, 256)]
    with pytest.raises(ResourceExhausted, match="n1 is disabled"):
        choose_node(nodes, 1, 512, 16.0, 1.5)
