"""A Python client of the minicloud gRPC API, and the `minicloud` CLI."""
