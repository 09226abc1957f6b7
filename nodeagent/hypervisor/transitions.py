"""Which power actions each domain power state allows, and where they lead.

Shared by every hypervisor driver so that they refuse the same things; the
table itself is the wire's (common.nodewire.power), which the control
plane's lifecycle follows too.
"""

from __future__ import annotations

from common.nodewire.power import POWER_TRANSITIONS, target_of

__all__ = ["POWER_TRANSITIONS", "target_of"]
