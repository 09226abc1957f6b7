"""Runs agent operations on an instance's in-guest agent, moving blobs as needed.

execute relays output chunks as they come (when asked) and returns Shaken
Fist's result fields; put streams a blob from the control plane into the
guest; get streams a guest file into a new blob. Failures raise
``GuestOpError``; ``retryable`` is true only when nothing reached the guest
(its agent was not ready), so the operation can simply be queued again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from nodeagent.guest.channel import GuestError, GuestUnavailable
from nodeagent.messages import Command, ExecOutput

DEFAULT_TIMEOUT = 300.0


class GuestOpError(Exception):
    """An agent operation failed; ``retryable`` says whether trying again makes sense."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ExecResultLike(Protocol):
    """What an execute returns."""

    return_code: int
    stdout: bytes
    stderr: bytes


class ChannelPort(Protocol):
    """The guest channel operations used here."""

    async def execute(
        self,
        command: str,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: float = ...,
        on_output: Callable[[str, bytes], None] | None = ...,
    ) -> Any: ...

    async def put(self, path: str, mode: int, chunks: AsyncIterator[bytes]) -> Any: ...

    async def get(self, path: str) -> tuple[dict[str, Any], AsyncIterator[bytes]]: ...


class LinksPort(Protocol):
    """Finds the ready guest channel of an instance."""

    def channel(self, uuid: str) -> Any: ...


class BlobTransfer(Protocol):
    """Moving blob bytes to and from the control plane (nodeagent.blobclient has the real one)."""

    def download(self, uuid: str) -> AsyncIterator[bytes]: ...

    async def upload(self, chunks: AsyncIterator[bytes]) -> str: ...


class GuestOps:
    """Agent operations for every instance on this node."""

    def __init__(
        self, links: LinksPort, blobs: BlobTransfer, send: Callable[[ExecOutput], None]
    ) -> None:
        self.links = links
        self.blobs = blobs
        self.send = send

    async def run(self, command: Command) -> dict[str, Any]:
        """Run one agent command; returns its result fields."""
        action = command.agent or {}
        channel = self.links.channel(command.instance_uuid)
        if channel is None:
            raise GuestOpError("the instance's agent is not ready", retryable=True)
        kind = action.get("kind")
        try:
            if kind == "execute":
                return await self._execute(channel, command, action)
            if kind == "put":
                await channel.put(
                    str(action["path"]),
                    int(action.get("mode", 0o644)),
                    self.blobs.download(str(action["blob_uuid"])),
                )
                return {"path": action["path"]}
            if kind == "get":
                stat, chunks = await channel.get(str(action["path"]))
                try:
                    blob = await self.blobs.upload(coalesce(chunks))
                finally:
                    await chunks.aclose()  # a failed upload must not leave the channel stalled
                return {"path": action["path"], "stat_result": stat, "content_blob": blob}
        except GuestUnavailable as exc:
            # It may have run in part: not safe to repeat by itself.
            raise GuestOpError(f"lost contact with the agent: {exc}", retryable=False) from exc
        except GuestError as exc:
            raise GuestOpError(str(exc), retryable=False) from exc
        raise GuestOpError(f"unknown agent operation {kind!r}")

    async def _execute(
        self, channel: Any, command: Command, action: dict[str, Any]
    ) -> dict[str, Any]:
        def relay(stream: str, data: bytes) -> None:
            self.send(ExecOutput(command.command_id, stream, data))

        result = await channel.execute(
            str(action["command_line"]),
            env=dict(action.get("env") or {}) or None,
            cwd=str(action.get("cwd") or "") or None,
            timeout=float(action.get("timeout") or DEFAULT_TIMEOUT),
            on_output=relay if action.get("stream_output") else None,
        )
        return {
            "return-code": result.return_code,
            "stdout": result.stdout.decode("utf-8", "replace"),
            "stderr": result.stderr.decode("utf-8", "replace"),
        }


UPLOAD_CHUNK = 1024 * 1024


async def coalesce(chunks: AsyncIterator[bytes], size: int = UPLOAD_CHUNK) -> AsyncIterator[bytes]:
    """Join small chunks (the guest sends 32 KiB frames) into ~1 MiB messages."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)
