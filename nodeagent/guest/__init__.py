"""Everything the node agent does with in-guest agents.

``channel``: ``GuestChannel``, one framing session with one guest agent
through the domain's ``sf-agent`` socket (the only node agent module that
imports ``guestagent.protocol``). ``links``: ``GuestLinks``, a channel per
running instance kept alive, reporting its agent state. ``watch``:
``GuestWatch``, links in step with domains' power states, states sent to the
control plane. ``ops``: ``GuestOps``, agent operations (execute, put, get).
``states``: what a guest's is-system-running answer means as an agent state
(the states themselves are ``common.nodewire.agentstate.AgentState``).
"""
