"""The store port, its RocksDB adapter, an in-memory fake, and typed records."""
