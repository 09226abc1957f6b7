"""What a request must pass before its handler reads a byte of its body, in order.

1. A valid bearer token, on every path but the public ones (``/``, ``/auth``,
   ``/openapi.json``, ``/healthz``, ``/readyz``): otherwise 401, whatever the
   path, method or body, so a stranger learns nothing of what exists.
2. A known path: otherwise 404.
3. A route this gateway serves: a Shaken Fist route it does not serve is 404
   ``"<METHOD> <path> is not implemented"`` (``gateway.unimplemented``).
4. A method served on the path: otherwise 405 with an ``Allow`` header.
5. Path parameters and query values that are valid UTF-8: otherwise 400.

Only then does the handler read and validate the body (``gateway.routing``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import HttpError
from gateway.routing import BACKEND
from gateway.tokencheck import TOKENS
from gateway.unimplemented import unserved

PUBLIC_PATHS: web.AppKey[frozenset[str]] = web.AppKey("public_paths", frozenset)


def printable(text: str) -> str:
    """text with anything that is not valid Unicode escaped (for messages and logs)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_unicode(text: str) -> bool:
    """Whether text encodes to UTF-8 (no lone surrogates from undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def admit(request: web.Request) -> None:
    """Return if the request may reach its handler; raise the HttpError to answer otherwise."""
    app = request.app
    path = request.path
    if path not in app[PUBLIC_PATHS]:
        await app[TOKENS].check(app[BACKEND], request.headers.get("Authorization"))
    error = getattr(request.match_info, "http_exception", None)
    if error is not None:
        missing = unserved(path)
        if request.method in missing:
            raise HttpError(404, f"{request.method} {missing[request.method]} is not implemented")
        allowed = set(getattr(error, "allowed_methods", ()))
        if not allowed and not missing:
            raise HttpError(404, "no such path")
        raise HttpError(
            405,
            f"method {printable(request.method)[:20]} is not allowed here",
            {"Allow": ", ".join(sorted(allowed))},
        )
    if not all(is_unicode(v) for v in request.match_info.values()) or not is_unicode(path):
        raise HttpError(400, "the request path is not valid UTF-8")
    if not all(is_unicode(k) and is_unicode(v) for k, v in request.query.items()):
        raise HttpError(400, "the query string is not valid UTF-8")
