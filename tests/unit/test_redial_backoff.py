"""The node agent's redial backoff (nodeagent/stream.py)."""

from __future__ import annotations

import random

from nodeagent.stream import backoff


def test_the_delay_grows_then_stays_under_the_cap() -> None:
    """Delays are jittered below base * 2^attempt, and never above the cap."""
    rng = random.Random(1)
    assert backoff(0, 0.5, 15.0, rng) <= 0.5
    assert all(backoff(n, 0.5, 15.0, rng) <= 15.0 for n in range(100))


def test_a_node_refused_for_ever_keeps_redialling() -> None:
    """Thousands of attempts (a revoked node redialling for days) still give a delay."""
    assert 0 <= backoff(5000, 0.5, 15.0, random.Random(2)) <= 15.0
