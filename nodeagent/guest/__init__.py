"""The node agent's side of the guest protocol: one channel per instance's in-guest agent.

``channel`` holds ``GuestChannel`` (one connection to one guest agent through
the domain's ``sf-agent`` socket) and ``GuestLinks`` (keeps a channel per
running instance alive and reports Shaken Fist's ``agent_state`` strings).
It is the only node agent module that imports ``guestagent.protocol``.
"""
