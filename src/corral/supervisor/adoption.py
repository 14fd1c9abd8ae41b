"""Which running child a new supervisor keeps (pure).

After a supervisor restart the launcher lists its children.  A child is adopted when its
process is still wanted; when two children claim the same instance (a rollout was under
way when the last supervisor died), the one of the older generation stays and the other
is stopped: a newer one was never confirmed healthy, and is started again if wanted.
"""

from __future__ import annotations

from enum import Enum

from corral.states import Desired

from .instance import Service


class Keep(Enum):
    """Of two children claiming one instance, the one to keep (the other is stopped)."""

    PRESENT = "present"  # the one adopted first
    CHILD = "child"      # the one being looked at now


def wanted(service: Service | None, index: int) -> bool:
    """Whether instance ``index`` of ``service`` should run (loaded, wanted up, and
    within its instance count)."""
    return (service is not None and service.desired is Desired.UP
            and 0 <= index < service.spec.instances)


def arbitrate(present_gen: int, child_gen: int, current_gen: int) -> Keep:
    """Two children for one instance: the one adopted first (``present_gen``) and another
    (``child_gen``); ``current_gen`` is the service's generation.  The older generation
    is kept; of two of the same generation, or two that are both not current, the first."""
    newer_child = present_gen != current_gen and child_gen == current_gen
    both_old = child_gen != current_gen and present_gen != current_gen
    if child_gen == present_gen or newer_child or both_old:
        return Keep.PRESENT
    return Keep.CHILD
