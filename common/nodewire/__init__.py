"""The node stream's wire, shared by the control plane and the node agent.

The pure modules (``domain``, ``network``, ``commands``, ``messages``,
``power``) hold plain frozen dataclasses and import only the standard
library; ``convert`` is the one module that turns them into protobuf and
back.
"""
