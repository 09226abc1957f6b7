"""A tiny image server on 127.0.0.1 for URL cache tests: files, redirects, slow and huge answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

STEP = 256 * 1024


@dataclass
class ImageServer:
    """Where it listens, the files it serves by path, and the paths asked for."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of a path on this server (another host name or address if given)."""
        return f"http://{host}:{self.port}{path}"


@asynccontextmanager
async def serve_images(files: dict[str, bytes]) -> AsyncIterator[ImageServer]:
    """Serve ``files`` at their paths, plus:

    ``/redirect?to=URL`` (302 to URL), ``/slow`` (a few bytes, then silence),
    ``/endless`` (bytes without Content-Length, forever) and a 404 for anything else.
    """
    server = ImageServer(files=files)
    closing = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        server.hits.append(request.path_qs)
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        if request.path in ("/slow", "/endless"):
            answer = web.StreamResponse()
            await answer.prepare(request)
            while not closing.is_set():
                await answer.write(b"x" * STEP)
                if request.path == "/slow":
                    await closing.wait()
                await asyncio.sleep(0)
            return answer
        data = server.files.get(request.path)
        if data is None:
            raise web.HTTPNotFound()
        answer = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await answer.prepare(request)
        for start in range(0, len(data), STEP):
            await answer.write(data[start : start + STEP])
            await asyncio.sleep(0)
        await answer.write_eof()
        return answer

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = int(runner.addresses[0][1])
    try:
        yield server
    finally:
        closing.set()
        await runner.cleanup()
