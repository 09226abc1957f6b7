"""Test-session set-up: structured logs to stderr, as the entry points configure them.

``etcd`` is one real etcd (tests/etcd_server.py) shared by the whole session;
each test that uses it keeps to a key prefix of its own (``etcd_prefix``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import logs
from tests.etcd_server import EtcdServer, etcd_or_skip, start_etcd

logs.configure()


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """A single-member etcd on loopback for the session (skipped where etcd is missing)."""
    etcd_or_skip()
    server = start_etcd(Path(tempfile.mkdtemp(prefix="mc-etcd-")))
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix() -> bytes:
    """A key prefix no other test uses."""
    return f"/test-{uuid.uuid4().hex[:12]}/".encode()
