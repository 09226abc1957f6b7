"""The gateway's own health: /healthz (alive) and /readyz (can reach a serving control plane)."""

from __future__ import annotations

import aiohttp

from controlplane.app import ControlPlane
from tests.component.test_gateway import start_gateway


async def get(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, await r.json()


async def test_healthz_and_readyz_need_no_token(plane: ControlPlane) -> None:
    """Both answer without a token: alive, and ready while the control plane serves."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    try:
        assert await get(url + "/healthz") == (200, {"status": "ok"})
        assert await get(url + "/readyz") == (200, {"status": "ready"})
        await plane.set_health(False)
        status, body = await get(url + "/readyz")
        assert status == 503 and isinstance(body, dict) and body["status"] == 503
        assert await get(url + "/healthz") == (200, {"status": "ok"})
    finally:
        await runner.cleanup()


async def test_readyz_is_503_without_a_control_plane() -> None:
    """A gateway whose control plane is gone is alive but not ready."""
    runner, url = await start_gateway("127.0.0.1:1")
    try:
        assert await get(url + "/healthz") == (200, {"status": "ok"})
        status, body = await get(url + "/readyz")
        assert status == 503 and isinstance(body, dict) and "not" in str(body["error"])
    finally:
        await runner.cleanup()
