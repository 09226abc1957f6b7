#!/usr/bin/env python3
"""Serve a folder over HTTP on 127.0.0.1, as if the images in it were on the internet.

Usage::

    python3 tools/serve_images.py [--dir] DIRECTORY [--port PORT] [--bind ADDRESS]

GET and HEAD send Content-Length and ``Accept-Ranges: bytes``; a GET with
one ``Range: bytes=A-B`` (or ``A-``, or ``-N``) gets 206 and that slice,
an unsatisfiable range gets 416. With ``--port 0`` (the default) the system
picks a free port. The first line on stdout is the base URL, e.g.
``http://127.0.0.1:41233/``; request logs go to stderr. Tests can also call
``make_server(directory)`` and run ``serve_forever`` in a thread.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, AnyStr, BinaryIO

if TYPE_CHECKING:
    from _typeshed import SupportsRead, SupportsWrite

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1024 * 1024


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive (first, last) byte of a single-range header.

    Raise ValueError when the range cannot be satisfied; return None when the
    header is not a single byte range (then the whole file is sent).
    """
    match = RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":
        length = int(last_text)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(size - length, 0), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or first > last:
        raise ValueError("range outside the file")
    return first, last


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler that serves files with single byte ranges."""

    protocol_version = "HTTP/1.1"
    body_length: int | None = None

    def send_head(self) -> BinaryIO | None:
        """Send the status and headers; return the file positioned for the body."""
        self.body_length = None
        path = Path(self.translate_path(self.path))
        if path.is_dir() or not path.is_file() or self.path.endswith("/"):
            return super().send_head()
        try:
            stream = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        status = os.fstat(stream.fileno())
        try:
            span = parse_range(self.headers.get("Range", ""), status.st_size)
        except ValueError:
            stream.close()
            self.send_unsatisfiable(status.st_size)
            return None
        first, last = span or (0, status.st_size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {first}-{last}/{status.st_size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Last-Modified", self.date_time_string(int(status.st_mtime)))
        self.end_headers()
        stream.seek(first)
        self.body_length = last - first + 1
        return stream

    def send_unsatisfiable(self, size: int) -> None:
        """Answer 416 for a range outside a file of this size."""
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def copyfile(self, source: SupportsRead[AnyStr], outputfile: SupportsWrite[AnyStr]) -> None:
        """Copy the body: all of it, or the length send_head announced."""
        remaining = self.body_length
        if remaining is None:
            shutil.copyfileobj(source, outputfile, CHUNK)
            return
        while remaining > 0:
            data = source.read(min(CHUNK, remaining))
            if not data:
                break
            outputfile.write(data)
            remaining -= len(data)


def make_server(directory: Path, port: int = 0, bind: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Return a threading HTTP server for directory (not yet serving)."""
    handler = partial(RangeRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", help="folder to serve")
    parser.add_argument("--dir", type=Path, dest="dir_option", help="folder to serve")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    arguments = parser.parse_args(argv)
    directory = arguments.dir_option or arguments.directory
    if directory is None or not directory.is_dir():
        parser.error(f"give a folder to serve (not {directory})")
    server = make_server(directory, arguments.port, arguments.bind)
    print(f"http://{arguments.bind}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
