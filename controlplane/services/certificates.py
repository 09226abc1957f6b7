"""Certificate revocation: recorded in the store, refused at connect, open streams closed.

An administrator revokes a certificate by serial (``minicloud-ca revoke``
tells the control plane, or ``NodeAdminService.RevokeCertificate``). The
node listener asks ``is_revoked`` on every call, so a revoked node is refused
at once by every control plane sharing the store; ``run`` reads the
revocations every ``interval`` seconds and closes any open node stream whose
certificate is among them, so a node already connected (to this or any
control plane) is cut off within seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from controlplane.errors import InvalidArgument
from controlplane.nodes import NodeRegistry
from controlplane.services.namespaces import require_system
from controlplane.store.revocations import Revocation, Revocations

log = structlog.get_logger(__name__)

MAX_REASON = 200


class CertificateService:
    """Revoked certificates, and the streams they must no longer hold open."""

    def __init__(
        self,
        revocations: Revocations,
        nodes: NodeRegistry,
        clock: Callable[[], float],
        interval: float = 2.0,
    ) -> None:
        self.revocations = revocations
        self.nodes = nodes
        self.clock = clock
        self.interval = interval
        # Certificate serial of each node stream opened with a certificate.
        self.serials: dict[str, int] = {}

    async def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial is revoked (read from the store)."""
        return await self.revocations.get(serial) is not None

    async def revoke(self, caller: str, serial: str, name: str, reason: str) -> Revocation:
        """Revoke a certificate by serial (decimal); closes its stream here at once."""
        require_system(caller, "revoke certificates")
        if not serial.isdigit() or len(serial) > 60:
            raise InvalidArgument(f"serial {serial[:60]!r} is not a decimal serial number")
        if len(reason) > MAX_REASON or not reason.isprintable():
            raise InvalidArgument(f"reason must be printable, at most {MAX_REASON} characters")
        revocation = Revocation(int(serial), name[:200], reason or "revoked", self.clock())
        await self.revocations.add(revocation)
        log.info("certificate revoked", serial=serial, name=name, reason=revocation.reason)
        self.close_revoked({revocation.serial})
        return await self.revocations.get(revocation.serial) or revocation

    async def list_all(self, caller: str) -> list[Revocation]:
        """Every revoked certificate."""
        require_system(caller, "list revoked certificates")
        return await self.revocations.list_all()

    def opened(self, node: str, serial: int) -> None:
        """A node's stream was opened with the certificate of this serial."""
        self.serials[node] = serial

    def close_revoked(self, revoked: set[int] | frozenset[int]) -> list[str]:
        """Close each open stream whose certificate is revoked; the nodes cut off."""
        cut = []
        for node, serial in list(self.serials.items()):
            session = self.nodes.sessions.get(node)
            if session is None:
                del self.serials[node]
                continue
            if serial in revoked:
                log.warning("closing the stream of a revoked node", node=node, serial=serial)
                session.close()
                del self.serials[node]
                cut.append(node)
        return cut

    async def run(self) -> None:
        """Close streams of revoked certificates every interval, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            if not self.serials:
                continue
            try:
                revoked = {r.serial for r in await self.revocations.list_all()}
            except Exception:
                log.exception("cannot read revoked certificates; trying again")
                continue
            self.close_revoked(revoked)
