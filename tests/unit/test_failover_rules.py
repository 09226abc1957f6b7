"""Which calls move to the next control plane: reads and creates after any UNAVAILABLE,
other writes only when they were not sent."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from client.api import Client, Unreachable
from gateway.failover import repeatable


class Refused(grpc.RpcError):
    """An UNAVAILABLE answer (the call reached the address)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "going away"


class FakeStub:
    def __init__(self, log: list[str], target: str, fails: bool) -> None:
        self.log, self.target, self.fails = log, target, fails

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, **kwargs: Any) -> Any:
            self.log.append(f"{method}@{self.target}")
            if self.fails:
                raise Refused()
            return f"{method} answered by {self.target}"

        return call


class FakeConnection:
    """A connection that connects or not, and whose calls fail with UNAVAILABLE or not."""

    def __init__(self, target: str, log: list[str], connects: bool, fails: bool) -> None:
        self.target = target
        self._connects = connects
        self.stub = FakeStub(log, target, fails)

    def connects(self, timeout: float) -> bool:
        return self._connects

    def close(self) -> None:
        pass


def client(
    monkeypatch: pytest.MonkeyPatch, **behaviour: tuple[bool, bool]
) -> tuple[Client, list[str]]:
    """A client of a:1,b:2 whose connections behave as given (connects, fails)."""
    log: list[str] = []
    made = Client("a:1,b:2", plaintext=True)
    made.sleep = lambda _seconds: None
    fakes = {
        f"{name}:{port}": FakeConnection(f"{name}:{port}", log, *behaviour[name])
        for name, port in (("a", 1), ("b", 2))
    }
    made._connections = fakes  # type: ignore[assignment]
    monkeypatch.setattr(made, "_metadata_for", lambda conn: ())
    return made, log


def test_a_read_answered_unavailable_is_asked_again_of_the_next_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read sent to a, refused, goes to b, which stays current."""
    made, log = client(monkeypatch, a=(True, True), b=(True, False))
    assert made._call("Get", None, read=True) == "Get answered by b:2"  # type: ignore[arg-type]
    assert log == ["Get@a:1", "Get@b:2"]
    assert made.addresses.current == "b:2"


def test_a_write_answered_unavailable_goes_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """It may have been done: it is not sent again."""
    made, log = client(monkeypatch, a=(True, True), b=(True, False))
    with pytest.raises(Refused):
        made._call("PowerOff", None)  # type: ignore[arg-type]
    assert log == ["PowerOff@a:1"]


def test_a_write_moves_on_when_its_address_does_not_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing was sent to an address that never connected."""
    made, log = client(monkeypatch, a=(False, False), b=(True, False))
    assert made._call("PowerOff", None) == "PowerOff answered by b:2"  # type: ignore[arg-type]
    assert log == ["PowerOff@b:2"]


def test_each_address_is_tried_once_then_the_last_error_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two refusals for a read: two calls, then the second refusal; none connecting: Unreachable."""
    made, log = client(monkeypatch, a=(True, True), b=(True, True))
    with pytest.raises(Refused):
        made._call("List", None, read=True)  # type: ignore[arg-type]
    assert log == ["List@a:1", "List@b:2"]
    made, log = client(monkeypatch, a=(False, False), b=(False, False))
    with pytest.raises(Unreachable) as caught:
        made._call("List", None, read=True)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "a:1, b:2" in caught.value.details()
    assert log == []


@pytest.mark.parametrize(
    ("method", "again"),
    [
        ("/minicloud.v1.InstanceService/Get", True),
        ("/minicloud.v1.InstanceService/List", True),
        ("/minicloud.v1.BlobService/Download", True),
        ("/minicloud.v1.AuthService/Token", True),
        ("/grpc.health.v1.Health/Check", True),
        ("/minicloud.v1.InstanceService/Create", True),
        ("/minicloud.v1.AgentService/Get", False),
        ("/minicloud.v1.InstanceService/PowerOff", False),
        ("/minicloud.v1.InstanceService/Delete", False),
        ("/minicloud.v1.UploadService/Append", False),
    ],
)
def test_the_gateway_repeats_reads_tokens_health_and_creates_only(method: str, again: bool) -> None:
    """The gateway classifies by method name (it sends every create with a request id)."""
    assert repeatable(method) is again


class Broken(grpc.RpcError):
    """A stream cut off (UNAVAILABLE) after some messages."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class Chunk:
    def __init__(self, data: bytes) -> None:
        self.data = data


class BlobSource:
    """Serves DATA from the request's offset, cut off after cut_after chunks (or not)."""

    DATA = b"0123456789"

    def __init__(self, log: list[tuple[str, int]], target: str, cut_after: int | None) -> None:
        self.log, self.target, self.cut_after = log, target, cut_after

    def Download(self, request: Any, **kwargs: Any) -> Any:
        self.log.append((self.target, request.offset))
        for n, start in enumerate(range(request.offset, len(self.DATA), 2)):
            if self.cut_after is not None and n == self.cut_after:
                raise Broken()
            yield Chunk(self.DATA[start : start + 2])


def test_a_broken_download_resumes_at_its_byte_through_the_next_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """a serves 4 bytes and breaks; b is asked from byte 4 on: every byte once."""
    log: list[tuple[str, int]] = []
    made, _ = client(monkeypatch, a=(True, False), b=(True, False))
    first: Any = made._connections["a:1"]
    second: Any = made._connections["b:2"]
    first.blobs = BlobSource(log, "a:1", cut_after=2)
    second.blobs = BlobSource(log, "b:2", cut_after=None)
    assert b"".join(made.download_blob("u")) == BlobSource.DATA
    assert log == [("a:1", 0), ("b:2", 4)]
