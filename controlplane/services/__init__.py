"""Use cases of the public API, free of any transport."""
