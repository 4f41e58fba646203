"""What a task knows implicitly while it works for an agent, as context variables.

Trio copies a task's context into the tasks it starts, so an agent's background tasks see the
same agent; the agent runtime resets what must not leak into them.
"""

from __future__ import annotations

import contextvars
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell import AgentCell

__all__ = ["current_cell", "inherited_deadline"]

#: The agent whose task is running, so that sends know their sender.
current_cell: contextvars.ContextVar[AgentCell | None] = contextvars.ContextVar(
    "terraphim_actors.current_cell", default=None
)

#: The deadline of the call the current task is handling, so that a call made inside a
#: handler never outlives the call that caused it.
inherited_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "terraphim_actors.inherited_deadline", default=math.inf
)
