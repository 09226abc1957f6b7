"""The gateway's schema states what the control plane enforces (so a valid request is not 400)."""

from __future__ import annotations

import re

import pytest

from controlplane.errors import InvalidArgument
from controlplane.retention import EVENT_TYPES, check_event_type
from controlplane.services.agent import _check_path
from gateway.fields import INT64_MAX, KINDS
from gateway.routes.agent import INSTANCE_PATH
from gateway.routes.instances import EVENT_FIELDS
from gateway.routes.instances import EVENT_TYPES as GATEWAY_EVENT_TYPES


def test_event_types_are_the_control_planes() -> None:
    """The event_type enum is the control plane's list, plus "" for every type."""
    assert GATEWAY_EVENT_TYPES == EVENT_TYPES
    enum = next(f for f in EVENT_FIELDS if f.name == "event_type").rules["enum"]
    for value in enum:
        assert check_event_type(value) == value


@pytest.mark.parametrize(
    "path", ["/", "/etc/hosts", "/a b/c\u00e9", "relative", "", "/a\0b", "/" * 4097]
)
def test_an_instance_path_valid_by_the_schema_is_taken(path: str) -> None:
    """A path matching the schema's pattern and length passes the control plane's check."""
    valid = (
        bool(re.search(INSTANCE_PATH["pattern"], path)) and len(path) <= INSTANCE_PATH["maxLength"]
    )
    try:
        _check_path(path)
    except InvalidArgument:
        assert not valid
    else:
        assert valid


def test_the_longest_octal_mode_fits_int64() -> None:
    """21 octal digits (the pattern's bound) hold at most int64's maximum."""
    pattern = KINDS["mode"]["oneOf"][1]["pattern"]
    assert re.fullmatch(pattern, "7" * 21) and not re.fullmatch(pattern, "7" * 22)
    assert int("7" * 21, 8) == INT64_MAX
