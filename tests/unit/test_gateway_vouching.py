"""Only the gateway's certificate passes a caller's address on; other forwarded ones are ignored."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest

from common import forwarded, pki
from controlplane.api.auth import ProxyTrust
from gateway.app import voucher
from gateway.settings import GatewaySettings

NOW = datetime.datetime.now(datetime.UTC)
CA = pki.create_ca("cluster-one", NOW)
GATEWAY = pki.issue(CA, "gateway", "rest-gateway", NOW)
NODE = pki.issue(CA, "node", "node1", NOW)
OTHER_CA = pki.create_ca("cluster-two", NOW)
OTHER_GATEWAY = pki.issue(OTHER_CA, "gateway", "rest-gateway", NOW)


PEER = "ipv4:10.0.0.9:5"


class _Context:
    """A gRPC servicer context: a peer and call metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str = PEER) -> None:
        self._metadata = metadata
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


class _Certificates:
    """The revocations the store holds."""

    def __init__(self, revoked: set[int] | None = None) -> None:
        self.revoked = revoked or set()

    async def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked


def login(
    pair: pki.KeyPair | None,
    address: str = "198.51.100.7",
    namespace: str = "system",
    signed_for: str = "",
    revoked: set[int] | None = None,
    when: float | None = None,
) -> str:
    """The caller's address the control plane counts a login from."""
    metadata: tuple[tuple[str, str], ...] = ((forwarded.ADDRESS_KEY, address),)
    if pair is not None:
        proof = forwarded.prove(
            pair.cert, pair.key, signed_for or address, namespace, when or time.time()
        )
        metadata += ((forwarded.PROOF_KEY, proof),)
    trust = ProxyTrust(CA.cert, _Certificates(revoked))  # type: ignore[arg-type]
    return asyncio.run(trust.caller(_Context(metadata), namespace))


def test_the_gateways_certificate_makes_its_address_believed() -> None:
    """An address signed by a current gateway certificate of the CA is the caller's."""
    assert login(GATEWAY) == "198.51.100.7"


def test_an_unvouched_forwarded_address_is_ignored() -> None:
    """Without proof (even from loopback, which plaintext mode trusts) the peer is the caller."""
    assert login(None) == "10.0.0.9"
    trust = ProxyTrust(CA.cert, _Certificates())  # type: ignore[arg-type]
    loopback = _Context(((forwarded.ADDRESS_KEY, "198.51.100.7"),), peer="ipv4:127.0.0.1:5")
    assert asyncio.run(trust.caller(loopback, "system")) == "127.0.0.1"


@pytest.mark.parametrize(
    "case",
    ["node certificate", "another CA", "another address", "stale", "revoked"],
)
def test_any_other_proof_is_ignored(case: str) -> None:
    """Node certificates, other clusters' gateways, altered, stale or revoked proofs: ignored."""
    if case == "node certificate":
        assert login(NODE) == "10.0.0.9"
    elif case == "another CA":
        assert login(OTHER_GATEWAY) == "10.0.0.9"
    elif case == "another address":
        assert login(GATEWAY, signed_for="203.0.113.1") == "10.0.0.9"
    elif case == "stale":
        assert login(GATEWAY, when=time.time() - forwarded.WINDOW - 5) == "10.0.0.9"
    else:
        serial = pki.info(GATEWAY.cert).serial
        assert login(GATEWAY, revoked={serial}) == "10.0.0.9"


def test_a_proof_is_for_one_namespace() -> None:
    """A proof made for a login into one namespace does not vouch for another."""
    proof = forwarded.prove(GATEWAY.cert, GATEWAY.key, "198.51.100.7", "team", time.time())
    with pytest.raises(pki.PkiError, match="signature"):
        forwarded.check(proof, "198.51.100.7", "system", CA.cert, time.time())
    for garbage in ("", "1.2", "x.y.z", "1." + "A" * 5000 + ".B"):
        with pytest.raises(pki.PkiError):
            forwarded.check(garbage, "198.51.100.7", "system", CA.cert, time.time())


def test_the_gateway_loads_only_a_gateway_certificate_with_its_key(tmp_path: Path) -> None:
    """The gateway's voucher is a gateway certificate and its own key; anything else stops it."""
    files = {}
    for name, data in {
        "gw.crt": GATEWAY.cert,
        "gw.key": GATEWAY.key,
        "node.crt": NODE.cert,
        "node.key": NODE.key,
    }.items():
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    assert voucher(GatewaySettings()) is None
    found = voucher(GatewaySettings(client_cert=files["gw.crt"], client_key=files["gw.key"]))
    assert found is not None and found.cert == GATEWAY.cert
    with pytest.raises(OSError, match="node certificate"):
        voucher(GatewaySettings(client_cert=files["node.crt"], client_key=files["node.key"]))
    with pytest.raises(OSError, match="signature"):
        voucher(GatewaySettings(client_cert=files["gw.crt"], client_key=files["node.key"]))
