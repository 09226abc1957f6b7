"""The node agent: one per hypervisor, streaming to the control plane."""
