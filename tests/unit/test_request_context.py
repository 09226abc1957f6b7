"""Request context for logs: which request ids are kept, and what a request binds."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from common import logs


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("abc", True),
        ("0f6c1a2e-5b7d-4c7a-9d55-3f0e5f3c2a11", True),
        ("req.1:a-b_c", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ("caf\u00e9", False),
        ("\udcff", False),
    ],
)
def test_only_short_plain_request_ids_are_kept(value: str, kept: bool) -> None:
    """A request id is kept only when it is 1-64 letters, digits or ``._:-``."""
    assert logs.clean_request_id(value) == (value if kept else "")


def test_new_request_ids_are_unique_and_clean() -> None:
    """A made-up request id passes the same check and differs each time."""
    ids = {logs.new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(logs.clean_request_id(i) == i for i in ids)


async def test_a_request_binds_only_its_own_context() -> None:
    """Starting a request drops what an earlier one bound; None values are not bound."""

    async def serve() -> dict[str, object]:
        logs.bind(stale="left over")
        logs.start_request("r1", namespace="ns", instance=None)
        logs.bind(instance="i1")
        assert logs.request_id() == "r1"
        return structlog.contextvars.get_contextvars()

    bound = await asyncio.create_task(serve())
    assert bound == {"request_id": "r1", "namespace": "ns", "instance": "i1"}
    # The request ran in its own task: nothing leaked into this one.
    assert logs.request_id() == ""
