"""Disk preparation: base images fetched into a cache, qcow2 overlays on top."""
