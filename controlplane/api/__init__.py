"""API adapters: gRPC servicers (public API and node stream); the REST gateway later."""
