"""The one table of Shaken Fist routes this gateway does not serve, and matching against it.

A request for one of these (with a valid token) is answered 404
``{"error": "<METHOD> <path> is not implemented"}``: shakenfist-client turns a
405 into a traceback, and a 404 into a clean "Resource not found". The
capability tokens whose calls need a route listed here are never advertised
on ``GET /`` (a unit test holds ``gateway.capabilities`` to that).

Source: ``shakenfist/external_api/app.py`` of github.com/shakenfist/shakenfist
at da448b1a (develop, the v0.8 era): every ``add_resource`` and the methods
its resource class defines, less what ``gateway.routes`` serves. The rows
marked "newest" are the post-0.8 routes shakenfist-client 0.8.3 calls (see
``shared/docs/shakenfist-rest-compat.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Unserved:
    """A Shaken Fist route (aiohttp path syntax) and the capability token needing it, if any."""

    method: str
    path: str
    token: str = ""


UNSERVED: tuple[Unserved, ...] = (
    Unserved("GET", "/admin/locks"),
    Unserved("GET", "/admin/cacert", "cluster-cacert"),
    Unserved("GET", "/admin/resources", "cluster-resources"),  # newest
    Unserved("GET", "/admin/vditokenpubkey"),  # newest
    Unserved("GET", "/blobs/{blob_uuid}/checksum/{algorithm}", "blob-single-checksum"),  # newest
    # sha512 is served (gateway.routes.blobs); other algorithms are not.
    Unserved("GET", "/blob_checksums/{algorithm}/{hash}"),
    Unserved("GET", "/clusteroperations", "cluster-operations-by-target"),  # newest
    Unserved("GET", "/clusteroperations/{op_type}/{op_uuid}", "get-cluster-operations"),  # newest
    Unserved("GET", "/instances/{instance_ref}/vdiconsoleproxy", "vdi-console-proxy"),  # newest
    Unserved("GET", "/label/{label_name:.+}"),
    Unserved("DELETE", "/label/{label_name:.+}"),
    Unserved("GET", "/networks/{network_ref}/ping/{address}"),
    Unserved("POST", "/networks/{network_ref}/route", "route-addresses"),
    Unserved("DELETE", "/networks/{network_ref}/route/{address}", "route-addresses"),
    Unserved("POST", "/networks/{network_ref}/dns", "extra-dns-entries"),
    Unserved("DELETE", "/networks/{network_ref}/dns", "extra-dns-entries"),
    Unserved("GET", "/nodes/{node}/processmetrics", "node-process-metrics"),
)

_PARAM = re.compile(r"\{\w+(:[^}]*)?\}")


def _pattern(path: str) -> re.Pattern[str]:
    parts, last = [], 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[last : match.start()]))
        parts.append(".+" if match.group(1) else "[^/]+")
        last = match.end()
    parts.append(re.escape(path[last:]))
    return re.compile("".join(parts))


_PATTERNS = tuple((row, _pattern(row.path)) for row in UNSERVED)


def unserved(path: str) -> dict[str, str]:
    """Method -> Shaken Fist path pattern, for each route on path this gateway does not serve."""
    return {row.method: row.path for row, pattern in _PATTERNS if pattern.fullmatch(path)}


def tokens() -> set[str]:
    """Capability tokens that need a route this gateway does not serve."""
    return {row.token for row in UNSERVED if row.token}
