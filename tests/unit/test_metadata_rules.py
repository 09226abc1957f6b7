"""Reserved instance metadata keys, event types and the record schema upgrade."""

from __future__ import annotations

import json

import pytest

from controlplane.errors import InvalidArgument
from controlplane.model import DiskSpec, InstanceSpec, decode_instance
from controlplane.retention import DAY, check_event_type, cutoffs
from controlplane.validation import check_instance_metadata, check_metadata_key, check_spec


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"tags": []},
        {"tags": ["web", "db"], "affinity": {"web": -10, "db": 5}, "owner": {"any": [1, None]}},
        {"affinity": {"require_with_tag": ["db"], "prefer_without_tag": ["batch"]}},
    ],
)
def test_good_metadata_is_accepted(metadata: dict[str, object]) -> None:
    """Lists of tags, integer weights, constraint lists and any other JSON are accepted."""
    assert check_instance_metadata(metadata) == metadata


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"tags": "web"}, "'tags' must be a JSON list"),
        ({"tags": ["web", 3]}, "'tags' must be a JSON list"),
        ({"affinity": ["web"]}, "'affinity' must be a JSON object"),
        ({"affinity": {"web": "high"}}, "weight for tag 'web' must be an integer"),
        ({"affinity": {"web": 1.5}}, "must be an integer"),
        ({"affinity": {"web": True}}, "must be an integer"),
        ({"affinity": {"require_with_tag": "db"}}, "must be a list of tags"),
        ({"affinity": {"require_with_tag": ["db"], "web": 3}}, "mixes tag weights"),
        ({"": 1}, "key is required"),
        ({"big": "x" * 70000}, "at most"),
    ],
)
def test_bad_metadata_is_refused_with_a_reason(metadata: dict[str, object], message: str) -> None:
    """Bad reserved values and oversized metadata are InvalidArgument saying what is wrong."""
    with pytest.raises(InvalidArgument, match=message):
        check_instance_metadata(metadata)


def test_create_checks_metadata() -> None:
    """A create request with a bad affinity is refused before anything is stored."""
    spec = InstanceSpec("vm", 1, 512, (DiskSpec(1),), metadata={"affinity": {"a": "x"}})
    with pytest.raises(InvalidArgument, match="affinity"):
        check_spec(spec)


def test_long_keys_are_refused() -> None:
    """Metadata keys are at most 255 characters."""
    with pytest.raises(InvalidArgument, match="at most 255"):
        check_metadata_key("k" * 256)


def test_event_types_are_checked() -> None:
    """Known event types and the empty filter pass; others are InvalidArgument."""
    assert check_event_type("usage") == "usage"
    assert check_event_type("") == ""
    with pytest.raises(InvalidArgument, match="unknown event type 'bogus'"):
        check_event_type("bogus")


def test_cutoffs_follow_retention_days() -> None:
    """Each type's cutoff is now minus its days; zero days means never pruned."""
    assert cutoffs(100 * DAY, {"status": 7, "audit": 90, "usage": 0}) == {
        "status": 93 * DAY,
        "audit": 10 * DAY,
    }


def test_schema_1_instances_get_metadata_from_their_spec() -> None:
    """An instance stored before metadata was mutable reads with its spec's metadata."""
    raw = {
        "schema": 1,
        "uuid": "u",
        "namespace": "system",
        "spec": {"name": "vm", "cpus": 1, "memory": 512, "metadata": {"tags": ["a"]}},
    }
    assert decode_instance(json.dumps(raw).encode()).metadata == {"tags": ["a"]}
