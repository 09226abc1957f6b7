"""Page sizes and page tokens of paged listings (pure).

A page token is opaque to callers: URL-safe base64 (no padding) of
``i1:<uuid>``, the UUID of the last record the previous page looked at. The
next page resumes the store scan just past it, so records created or deleted
between pages never make a record appear twice. A token that does not decode
to that shape is refused with ``InvalidArgument``; a well-formed token of
another namespace's record reveals nothing, since every page is filtered by
the caller's visibility.
"""

from __future__ import annotations

import base64
import binascii

from controlplane.errors import InvalidArgument
from controlplane.validation import looks_like_uuid

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
_PREFIX = "i1:"


def page_size(requested: int) -> int:
    """The page size to use for a request's page_size (0: the default)."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, not {requested}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(uuid: str) -> str:
    """The token of a page that ends at the record with this UUID ("" for none)."""
    if not uuid:
        return ""
    return base64.urlsafe_b64encode((_PREFIX + uuid).encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The UUID a page token resumes after ("" for an empty token); InvalidArgument if forged."""
    if not token:
        return ""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        text = raw.decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeError is a ValueError
        raise InvalidArgument("page_token is not a token this API handed out") from None
    uuid = text[len(_PREFIX) :]
    if not text.startswith(_PREFIX) or not looks_like_uuid(uuid):
        raise InvalidArgument("page_token is not a token this API handed out")
    return uuid
