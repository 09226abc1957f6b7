"""One module of routes per object family; ``ALL`` is every table, in serving order."""
