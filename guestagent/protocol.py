"""The guest protocol: versioned, length-framed messages over a virtio-serial port.

Standard library only: the in-guest agent and the node agent both import this
module (it is the only part of ``guestagent`` the node agent may import).

Frame layout (big-endian)::

    offset  size  field
    0       2     magic b"MC"
    2       1     protocol version (VERSION, currently 1)
    3       1     kind (Kind)
    4       4     request id (u32; 0 = the link itself, not a request)
    8       4     JSON length (u32, at most MAX_JSON = 64 KiB; 0 means {})
    12      4     data length (u32, at most MAX_DATA = 1 MiB)
    16      J     UTF-8 JSON object: the structured fields
    16+J    D     raw binary data (no base64), only on the data kinds

A decoder checks the header before it buffers anything else: bad magic, an
unknown version or kind, a length over a limit, data on a kind that carries
none, invalid UTF-8/JSON or JSON that is not an object raise ``ProtocolError``.
Lengths are always known up front, so nothing is ever "parsed until it
decodes", and a peer claiming 4 GiB is refused without allocating.

Kinds, who sends them ("host" is the node agent, "guest" the in-guest agent)
and their fields. Every request is answered with frames carrying the id of the
request; the last frame of an answer is marked *final*.

=========  ======  ===========================================================
kind       from    fields / data
=========  ======  ===========================================================
HELLO      both    ``version`` (int), ``agent`` (str, name and version). The
                   host sends it first with a fresh request id; the guest
                   answers with the same id and adds ``boot_time`` (float,
                   Unix time, from /proc/stat ``btime``), ``hostname`` (str),
                   ``ops`` (list of str). A guest agent that starts while a
                   host is connected sends an unsolicited HELLO with id 0:
                   the host resets its link (the agent restarted).
PING       host    none; answered by PONG (final).
PONG       guest   ``time`` (float, guest clock).
REQUEST    host    ``op`` (str) and the op's fields:
                   ``execute``: ``command`` (str, run with /bin/sh -c),
                   ``env`` (object of str, added to the agent's environment),
                   ``cwd`` (str), ``timeout`` (float seconds, the guest kills
                   the command's process group when it expires), answered by
                   STDOUT/STDERR chunks as they are produced, then EXIT;
                   ``put``: ``path`` (absolute str), ``mode`` (int), followed
                   by PUT_DATA frames and a PUT_END from the host, answered by
                   OK; ``get``: ``path``, answered by STAT, GET_DATA chunks,
                   GET_END; ``is-system-running``: answered by OK;
                   ``freeze``: ``timeout`` (float seconds, capped at 60),
                   answered by OK; ``thaw``: answered by OK.
STDOUT     guest   data: a chunk of the command's standard output.
STDERR     guest   data: a chunk of the command's standard error.
EXIT       guest   ``return_code`` (int; -N for signal N), ``timed_out``
                   (bool) (final).
PUT_DATA   host    data: the next chunk of the file.
PUT_END    host    none: the file is complete.
STAT       guest   ``size``, ``mode``, ``mtime``, ``uid``, ``gid`` of the file.
GET_DATA   guest   data: the next chunk of the file.
GET_END    guest   ``size`` (int, bytes sent) (final).
OK         guest   op results: put ``size``; is-system-running ``state``
                   (str, e.g. "running", "degraded", "starting"); freeze
                   ``frozen`` (list of mount points), ``skipped`` (list of
                   ``path``/``reason`` objects), ``timeout``; thaw ``thawed``
                   (list), ``expired`` (bool: the freeze had already thawed
                   itself at its timeout) (final).
ERROR      guest   ``message`` (str), ``retryable`` (bool) (final). With
                   id 0 it reports a link-level problem (garbage received):
                   the guest then discards input until the host reconnects.
CANCEL     host    none: abandon request id (the guest kills the command,
                   stops sending or deletes the partial file) and answer
                   ERROR "cancelled".
=========  ======  ===========================================================

Frames for one request arrive in order; frames of different requests may
interleave. The guest writes every frame it sends in one write of at most
``GUEST_FRAME_LIMIT`` bytes, the largest write virtio-serial delivers whole,
so a host that disconnects never leaves half a guest frame in the port.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field

MAGIC = b"MC"
VERSION = 1
HEADER = struct.Struct("!2sBBIII")
HEADER_SIZE = HEADER.size
MAX_JSON = 64 * 1024
MAX_DATA = 1024 * 1024
MAX_FRAME = HEADER_SIZE + MAX_JSON + MAX_DATA
MAX_REQUEST_ID = 0xFFFFFFFF
GUEST_FRAME_LIMIT = 32 * 1024  # virtio_console accepts at most 32 KiB per write()


class ProtocolError(Exception):
    """The byte stream or a frame breaks the protocol; the link must be reset."""


class Kind(enum.IntEnum):
    """Frame kinds (see the module docstring for their fields)."""

    HELLO = 1
    PING = 2
    PONG = 3
    REQUEST = 4
    STDOUT = 5
    STDERR = 6
    EXIT = 7
    PUT_DATA = 8
    PUT_END = 9
    STAT = 10
    GET_DATA = 11
    GET_END = 12
    OK = 13
    ERROR = 14
    CANCEL = 15


DATA_KINDS = frozenset({Kind.STDOUT, Kind.STDERR, Kind.PUT_DATA, Kind.GET_DATA})
_KINDS = {kind.value: kind for kind in Kind}


@dataclass(frozen=True)
class Frame:
    """One message: its kind, the request it belongs to, JSON fields and raw data."""

    kind: Kind
    request_id: int = 0
    fields: dict[str, object] = field(default_factory=dict)
    data: bytes = b""

    def str_field(self, name: str, default: str | None = None) -> str:
        """A string field; ProtocolError when missing (without default) or not a string."""
        value = self.fields.get(name, default)
        if not isinstance(value, str):
            raise ProtocolError(f"{self.kind.name} field {name!r} must be a string")
        return value

    def int_field(self, name: str, default: int | None = None) -> int:
        """An integer field (not a bool); ProtocolError when missing or mistyped."""
        value = self.fields.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{self.kind.name} field {name!r} must be an integer")
        return value

    def float_field(self, name: str, default: float | None = None) -> float:
        """A finite number field; ProtocolError when missing or mistyped."""
        value = self.fields.get(name, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(f"{self.kind.name} field {name!r} must be a number")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ProtocolError(f"{self.kind.name} field {name!r} must be finite")
        return number

    def bool_field(self, name: str, default: bool | None = None) -> bool:
        """A boolean field; ProtocolError when missing or mistyped."""
        value = self.fields.get(name, default)
        if not isinstance(value, bool):
            raise ProtocolError(f"{self.kind.name} field {name!r} must be a boolean")
        return value


def encode(frame: Frame) -> bytes:
    """The bytes of a frame; ProtocolError when it breaks a limit."""
    if not 0 <= frame.request_id <= MAX_REQUEST_ID:
        raise ProtocolError(f"request id {frame.request_id} does not fit in 32 bits")
    body = b""
    if frame.fields:
        try:
            body = json.dumps(
                frame.fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{frame.kind.name} fields are not JSON: {exc}") from exc
    if len(body) > MAX_JSON:
        raise ProtocolError(f"{frame.kind.name} fields take {len(body)} bytes (limit {MAX_JSON})")
    if len(frame.data) > MAX_DATA:
        raise ProtocolError(
            f"{frame.kind.name} data is {len(frame.data)} bytes (limit {MAX_DATA}); send chunks"
        )
    if frame.data and frame.kind not in DATA_KINDS:
        raise ProtocolError(f"{frame.kind.name} frames carry no data")
    header = HEADER.pack(
        MAGIC, VERSION, int(frame.kind), frame.request_id, len(body), len(frame.data)
    )
    return b"".join((header, body, frame.data))


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _decode_fields(kind: Kind, body: bytes) -> dict[str, object]:
    if not body:
        return {}
    try:
        fields = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{kind.name} fields are not valid UTF-8 JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"{kind.name} fields must be a JSON object")
    return fields


class Decoder:
    """Turns bytes, fed in pieces of any size, into frames.

    It holds at most the unfinished part of one frame (never more than
    ``MAX_FRAME`` bytes once ``feed`` returns) and checks each header field
    as soon as its bytes arrive. After a ``ProtocolError`` every ``feed``
    raises again until ``reset()``: a broken stream has no frame boundaries
    left to trust.
    """

    def __init__(self, max_json: int = MAX_JSON, max_data: int = MAX_DATA) -> None:
        self.max_json = max_json
        self.max_data = max_data
        self._buffer = bytearray()
        self._need = 0  # size of the frame at the start of the buffer, once its header is in
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for the frame being received."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget buffered bytes and any earlier error (a new connection starts)."""
        self._buffer = bytearray()
        self._need = 0
        self._failed = None

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the frames they complete, in order."""
        if self._failed is not None:
            raise ProtocolError(f"stream already broken: {self._failed}")
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._need:
            return []  # the frame being received is still incomplete (the common case)
        frames: list[Frame] = []
        start = 0
        try:
            while True:
                size = self._frame_size(buffer, start)
                if size is None or len(buffer) - start < size:
                    self._need = size or 0
                    break
                frames.append(self._frame(buffer, start, size))
                start += size
        except ProtocolError as exc:
            self._failed = str(exc)
            self._buffer = bytearray()
            raise
        if start:
            del buffer[:start]
        return frames

    def _frame_size(self, buffer: bytearray, start: int) -> int | None:
        """The size of the frame at start, once its header is complete and valid."""
        available = len(buffer) - start
        if available >= 1 and buffer[start] != MAGIC[0]:
            raise ProtocolError(f"bad magic byte 0x{buffer[start]:02x} (expected b'MC')")
        if available >= 2 and buffer[start + 1] != MAGIC[1]:
            raise ProtocolError(f"bad magic byte 0x{buffer[start + 1]:02x} (expected b'MC')")
        if available >= 3 and buffer[start + 2] != VERSION:
            raise ProtocolError(
                f"unsupported protocol version {buffer[start + 2]} (this side speaks {VERSION})"
            )
        if available >= 4 and buffer[start + 3] not in _KINDS:
            raise ProtocolError(f"unknown frame kind {buffer[start + 3]}")
        if available < HEADER_SIZE:
            return None
        _magic, _version, kind, _rid, json_length, data_length = HEADER.unpack_from(buffer, start)
        if json_length > self.max_json:
            raise ProtocolError(f"frame claims {json_length} bytes of JSON (limit {self.max_json})")
        if data_length > self.max_data:
            raise ProtocolError(f"frame claims {data_length} bytes of data (limit {self.max_data})")
        if data_length and kind not in DATA_KINDS:
            raise ProtocolError(f"{Kind(kind).name} frames carry no data, got {data_length} bytes")
        return int(HEADER_SIZE + json_length + data_length)

    @staticmethod
    def _frame(buffer: bytearray, start: int, size: int) -> Frame:
        _magic, _version, kind_value, request_id, json_length, _ = HEADER.unpack_from(buffer, start)
        kind = _KINDS[kind_value]
        body_end = start + HEADER_SIZE + json_length
        fields = _decode_fields(kind, bytes(buffer[start + HEADER_SIZE : body_end]))
        data = bytes(buffer[body_end : start + size])
        return Frame(kind, request_id, fields, data)
