"""The capability tokens ``GET /`` advertises: exactly what the gateway serves.

shakenfist-client tests tokens by substring search in the root page, so the
page holds nothing but these lines (no prose in which a token could appear by
accident). A token is listed only when its routes exist and the control plane
implements the gRPC service behind them.

Networks are served with the synchronous delete (the old shape), so
``network-delete-async`` is absent; so are ``route-addresses`` and
``extra-dns-entries`` (no routed addresses, no extra DNS records, no ping).
``provide-dns``: networks created with ``provide_dns`` answer
``NAME.NAMESPACE.ZONE`` for their instances.
Nodes are served (list, get, delete, events, metadata) but not their process
metrics (``node-process-metrics``). Snapshots (``instance-snapshot``; Shaken
Fist itself has no token for them: every release serves them) are served.
Caching artifacts from a URL and namespace trust are served, but Shaken Fist
names no token for them, so none is listed. Not served at all: cluster
operations. Artifact versions,
deletion and events have no token of their own; ``blob-events`` says blob events
are served.
"""

from __future__ import annotations

# family -> tokens
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "agent-operations": (
        "agentoperations-crud",
        "instance-agentoperations",
        "instance-agentoperations-all",
    ),
    "artifacts": ("artifact-metadata",),
    "blobs": ("blob-metadata", "blob-search-by-hash", "blob-data-limit", "blob-events"),
    "events": ("events-by-type",),
    "instances": (
        "get-instance-namespace",
        "instance-put-blob",
        "instance-execute",
        "instance-get",
        "instance-screenshot",
        "vdi-console-helper",
        "hot-plug-interface",
        "instance-snapshot",
    ),
    "networks": ("list-addresses", "get-network-namespace", "provide-dns"),
    "networkinterfaces": ("interface-metadata",),
    "nodes": ("node-get", "node-metadata"),
}

# Every token shakenfist-client 0.8.3 checks (compat doc §3), to test the page against.
CLIENT_TOKENS = (
    "agentoperations-crud",
    "artifact-metadata",
    "artifact-upload-types",
    "blob-data-limit",
    "blob-events",
    "blob-metadata",
    "blob-search-by-hash",
    "blob-single-checksum",
    "cluster-cacert",
    "cluster-operation-chain",
    "cluster-operations-by-target",
    "cluster-resources",
    "events-by-type",
    "extra-dns-entries",
    "get-cluster-operations",
    "get-instance-namespace",
    "get-network-namespace",
    "hot-plug-interface",
    "instance-agentoperations",
    "instance-agentoperations-all",
    "instance-execute",
    "instance-get",
    "instance-put-blob",
    "instance-screenshot",
    "interface-metadata",
    "list-addresses",
    "network-delete-async",
    "node-get",
    "node-metadata",
    "node-process-metrics",
    "provide-dns",
    "route-addresses",
    "vdi-console-helper",
    "vdi-console-proxy",
)


def advertised() -> tuple[str, ...]:
    """Every advertised token."""
    return tuple(token for tokens in CAPABILITIES.values() for token in tokens)


def root_page() -> str:
    """The text of ``GET /``: one ``family: token, token`` line per family."""
    lines = [f"{family}: {', '.join(tokens)}" for family, tokens in CAPABILITIES.items()]
    return "<html><body><pre>\n" + "\n".join(lines) + "\n</pre></body></html>\n"
