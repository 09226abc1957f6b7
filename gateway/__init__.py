"""The Shaken Fist REST gateway: a stateless HTTP front for the gRPC API.

It serves what shakenfist-client 0.8.3 sends (see
/work/shared/docs/shakenfist-rest-compat.md) by translating each request into
gRPC calls on one channel to the control plane, forwarding the caller's bearer
token. It imports only protos, grpc, aiohttp, structlog, ``common`` and
``controlplane.errors``.
"""
