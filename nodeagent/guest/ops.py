"""Runs agent operations on an instance's in-guest agent, moving blobs as needed.

execute relays output chunks as they come (when asked) and returns its
exit code and output; put streams a blob from the control plane into the
guest; get streams a guest file into a new blob. Failures raise
``GuestOpError``; ``retryable`` is true only when nothing reached the guest
(its agent was not ready), so the operation can simply be queued again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, assert_never

from common.nodewire.commands import (
    DEFAULT_AGENT_TIMEOUT,
    AgentCommand,
    AgentExecute,
    AgentGet,
    AgentPut,
)
from common.nodewire.messages import AgentResult, ExecOutput, ExecResult, GetResult, PutResult
from nodeagent.errors import NodeAgentError
from nodeagent.guest.channel import Frozen, GuestChannelError, GuestError, GuestUnavailable


class GuestOpError(NodeAgentError):
    """An agent operation failed; ``retryable`` says whether trying again makes sense."""


class ExecResultLike(Protocol):
    """What an execute returns."""

    return_code: int
    stdout: bytes
    stderr: bytes


class FileChunks(Protocol):
    """A file's content read from the guest; ``aclose`` stops the transfer early."""

    def __aiter__(self) -> FileChunks: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class AgentChannel(Protocol):
    """The guest channel operations used here (``GuestChannel`` has them)."""

    async def execute(
        self,
        command: str,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: float = ...,
        on_output: Callable[[str, bytes], None] | None = ...,
    ) -> Any: ...

    async def put(self, path: str, mode: int, chunks: AsyncIterator[bytes]) -> Any: ...

    async def get(self, path: str) -> tuple[dict[str, Any], FileChunks]: ...

    async def freeze(self, timeout: float) -> Frozen: ...

    async def thaw(self) -> tuple[tuple[str, ...], bool]: ...


class ReadyChannels(Protocol):
    """Finds the ready guest channel of an instance (``GuestLinks`` does)."""

    def channel(self, uuid: str) -> AgentChannel | None: ...


class BlobTransfer(Protocol):
    """Moving blob bytes to and from the control plane (nodeagent.blobclient has the real one)."""

    def download(self, uuid: str) -> AsyncIterator[bytes]: ...

    async def upload(self, chunks: AsyncIterator[bytes]) -> str: ...


class GuestOps:
    """Agent operations for every instance on this node."""

    def __init__(
        self, links: ReadyChannels, blobs: BlobTransfer, send: Callable[[ExecOutput], None]
    ) -> None:
        self.links = links
        self.blobs = blobs
        self.send = send

    async def run(self, command: AgentCommand) -> AgentResult:
        """Run one agent command; returns what the guest did."""
        channel = self.links.channel(command.instance_uuid)
        if channel is None:
            raise GuestOpError("the instance's agent is not ready", retryable=True)
        try:
            match command:
                case AgentExecute():
                    return await self._execute(channel, command)
                case AgentPut():
                    await channel.put(
                        command.path, command.mode, self.blobs.download(command.blob_uuid)
                    )
                    return PutResult(command.path)
                case AgentGet():
                    stat, chunks = await channel.get(command.path)
                    try:
                        blob = await self.blobs.upload(coalesce(chunks))
                    finally:
                        await chunks.aclose()  # a failed upload must not leave the channel stalled
                    return GetResult(command.path, blob, stat)
                case _:
                    assert_never(command)
        except GuestUnavailable as exc:
            # It may have run in part: not safe to repeat by itself.
            raise GuestOpError(f"lost contact with the agent: {exc}", retryable=False) from exc
        except GuestError as exc:
            raise GuestOpError(str(exc), retryable=False) from exc

    async def freeze(self, uuid: str, timeout: float) -> tuple[tuple[str, ...], str]:
        """Freeze the guest's file systems: (mount points frozen, "") or ((), why not).

        Never raises: a guest that cannot freeze is snapshotted crash-consistent.
        """
        channel = self.links.channel(uuid)
        if channel is None:
            return (), "the guest agent is not ready"
        try:
            frozen = await channel.freeze(timeout)
        except GuestChannelError as exc:
            return (), f"the guest agent could not freeze: {exc}"
        if not frozen.frozen:
            return (), "the guest agent found nothing to freeze"
        return frozen.frozen, ""

    async def thaw(self, uuid: str) -> str:
        """Thaw the guest's file systems: "" when the freeze held until now, else why not."""
        channel = self.links.channel(uuid)
        if channel is None:
            return "the guest agent went away before the thaw (it thaws by itself)"
        try:
            _thawed, expired = await channel.thaw()
        except GuestChannelError as exc:
            return f"the thaw failed: {exc} (the guest thaws by itself)"
        return "the freeze expired before the snapshot was taken" if expired else ""

    async def _execute(self, channel: AgentChannel, command: AgentExecute) -> ExecResult:
        def relay(stream: str, data: bytes) -> None:
            self.send(ExecOutput(command.command_id, stream, data))

        result = await channel.execute(
            command.command_line,
            env=dict(command.env) or None,
            cwd=command.cwd or None,
            timeout=command.timeout or DEFAULT_AGENT_TIMEOUT,
            on_output=relay if command.stream_output else None,
        )
        return ExecResult(
            result.return_code,
            result.stdout.decode("utf-8", "replace"),
            result.stderr.decode("utf-8", "replace"),
        )


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
