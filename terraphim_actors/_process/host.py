"""What an agent's cell needs of the system it runs in, as a protocol.

The cell is below the system in the layers: it names this protocol, and the system (today's
``MessageSystem``) satisfies it without the cell importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import trio

from .._core.ids import AgentId
from .._core.instruments import Instruments
from .._delivery.pipeline import DeliveryManager
from .._primitives.timers import TimerService

if TYPE_CHECKING:
    from .cell import AgentCell

__all__ = ["AgentHost"]


class AgentHost(Protocol):
    """The services a cell (and a ref to it) uses: delivery, time, timers, a nursery for
    background tasks, the lifecycle counters and notifications, finding a live agent by id and
    forgetting one that stopped for good."""

    @property
    def delivery(self) -> DeliveryManager: ...

    @property
    def clock(self) -> trio.abc.Clock: ...

    @property
    def current_time(self) -> Callable[[], float]:
        """The clock's ``current_time``, one bound method that every agent's loop shares."""
        ...

    @property
    def timers(self) -> TimerService: ...

    @property
    def nursery(self) -> trio.Nursery: ...

    @property
    def closing(self) -> bool:
        """True once the system shuts down: every stop is then for good."""
        ...

    @property
    def over_by(self) -> float:
        """Trio time by which every agent must be over, its ``on_stop`` included: ``inf``
        until the shutdown's deadline has passed (or a second signal cut it short)."""
        ...

    @property
    def thread_id(self) -> int: ...

    @property
    def instruments(self) -> Instruments:
        """The installed instruments: the loop tells them of each handler's start and end."""
        ...

    def publish(self, notification: object) -> None: ...

    def starts_seen(self) -> bool:
        """Whether anything outside the agents hears of each agent's start (else the cell
        makes no notice of it)."""
        ...

    def stops_seen(self) -> bool:
        """Whether anything outside the agents hears of each agent's end, in order (so that
        stopping agents together could show a different order)."""
        ...

    def is_subscriber(self, cell: AgentCell) -> bool:
        """Whether ``cell`` hears of agents starting and stopping (at shutdown it handles
        what it was sent before it stops, so that it sees the others go)."""
        ...

    def count_crash(self) -> None: ...

    def count_restart(self) -> None: ...

    def retire(self, cell: AgentCell) -> None: ...

    def live_cell(self, agent_id: AgentId) -> AgentCell | None:
        """The agent running (or restarting) under ``agent_id``, if any."""
        ...
