"""The Shaken Fist REST gateway: a stateless HTTP front for the gRPC API.

It serves what shakenfist-client 0.8.3 sends (see
/work/shared/docs/shakenfist-rest-compat.md) by translating each request into
gRPC calls on one channel to the control plane, forwarding the caller's bearer
token. It is its own process and package: it imports only protos, grpc,
aiohttp, structlog and ``common`` (never ``controlplane``; an import contract
checks it).
"""
