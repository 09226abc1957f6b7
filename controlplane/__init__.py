"""The control plane: gRPC API, state in RocksDB, one stream per node agent."""
