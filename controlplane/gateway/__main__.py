"""``python -m controlplane.gateway``: the same as the minicloud-gateway script."""

from controlplane.gateway.app import main

main()
