"""Hypervisor drivers: the port, the libvirt adapter, and an in-memory fake."""
