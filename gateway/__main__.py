"""``python -m gateway``: the same as the minicloud-gateway script."""

from gateway.app import main

main()
