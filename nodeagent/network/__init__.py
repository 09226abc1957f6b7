"""The node's virtual networks: the driver port, its Linux adapter and a fake."""
