"""The cluster's certificates: what the CA issues and what a node certificate proves."""

from __future__ import annotations

import datetime

import pytest

from common import pki

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca("c1d2e3f4-0000-4000-8000-000000000001", NOW)


def test_a_node_certificate_names_its_node_and_its_cluster(ca: pki.KeyPair) -> None:
    """A node certificate's common name is the node; it expires a year out by default."""
    pair = pki.issue(ca, "node", "node1", NOW)
    found = pki.info(pair.cert)
    assert (found.name, found.kind) == ("node1", "node")
    assert found.cluster_id == "c1d2e3f4-0000-4000-8000-000000000001"
    assert found.not_after == NOW + datetime.timedelta(days=365)
    assert pki.node_name(pair.cert, ca.cert, NOW) == "node1"


def test_a_server_certificate_carries_the_names_asked_for(ca: pki.KeyPair) -> None:
    """DNS names and IP addresses become subject alternative names; none is refused."""
    pair = pki.issue(ca, "server", "cp", NOW, sans=("127.0.0.1", "cp.example.org"))
    assert set(pki.info(pair.cert).sans) == {"127.0.0.1", "cp.example.org"}
    with pytest.raises(pki.PkiError, match="at least one"):
        pki.issue(ca, "server", "cp", NOW)
    with pytest.raises(pki.PkiError, match="neither"):
        pki.issue(ca, "server", "cp", NOW, sans=("a b",))


def test_node_name_refuses_what_is_not_this_clusters_current_node_certificate(
    ca: pki.KeyPair,
) -> None:
    """Another CA's, a server's, and an expired certificate are each refused with a reason."""
    other = pki.create_ca("another-cluster", NOW)
    with pytest.raises(pki.PkiError, match="not issued by this cluster"):
        pki.node_name(pki.issue(other, "node", "node1", NOW).cert, ca.cert, NOW)
    server = pki.issue(ca, "server", "cp", NOW, sans=("127.0.0.1",))
    with pytest.raises(pki.PkiError, match="not a node certificate"):
        pki.node_name(server.cert, ca.cert, NOW)
    short = pki.issue(ca, "node", "node1", NOW, days=1)
    with pytest.raises(pki.PkiError, match="expired"):
        pki.node_name(short.cert, ca.cert, NOW + datetime.timedelta(days=2))


def test_bad_requests_are_refused(ca: pki.KeyPair) -> None:
    """Unknown kinds, empty names, and lifetimes beyond the CA's are refused."""
    with pytest.raises(pki.PkiError, match="kind"):
        pki.issue(ca, "client", "x", NOW)  # type: ignore[arg-type]
    with pytest.raises(pki.PkiError, match="name"):
        pki.issue(ca, "node", "", NOW)
    with pytest.raises(pki.PkiError, match="days"):
        pki.issue(ca, "node", "n", NOW, days=0)
    with pytest.raises(pki.PkiError, match="PEM"):
        pki.info(b"not a certificate")
