"""Structured logging, configured once by each process's entry point, and request context.

Every process renders structlog events with the context variables bound for
the work in hand merged in. What follows a request across processes is its
id: the REST gateway takes a caller's ``X-Request-ID`` (or makes one) and
sends it on as the ``x-request-id`` call metadata; the control plane binds
it with the caller's namespace and the instance the call is about, and sends
it with each node command it causes; the node agent binds it while it runs
that command. Event names are short lower-case phrases ("node connected");
details go in fields.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid as uuidlib
from typing import Any

import structlog

# The call-metadata key (and, capitalised, the HTTP header) carrying a request's id.
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 64
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def configure(json: bool = False, level: int = logging.INFO) -> None:
    """Send structlog output to stderr, as JSON lines or for a console."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def clean_request_id(value: str) -> str:
    """value if it is a usable request id (1-64 of ``A-Za-z0-9._:-``), else ""."""
    return value if _REQUEST_ID.fullmatch(value) else ""


def new_request_id() -> str:
    """A fresh request id."""
    return str(uuidlib.uuid4())


def bind(**values: Any) -> None:
    """Add fields to every log line of the current task (and tasks it starts); None skips."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def start_request(request_id: str, **values: Any) -> None:
    """Begin a request's logging context: only its id and the given fields are bound."""
    structlog.contextvars.clear_contextvars()
    bind(request_id=request_id, **values)


def request_id() -> str:
    """The id of the request being served ("" outside one)."""
    value = structlog.contextvars.get_contextvars().get("request_id", "")
    return value if isinstance(value, str) else ""
