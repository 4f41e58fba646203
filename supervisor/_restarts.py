"""The restart decision of a supervisor, as a plain object: no tasks, no waiting, no clock.

When a child exits, a supervisor must decide: what the exit calls for (a restart, nothing, or
giving up), whether its intensity allows one more restart, which children restart with the one
that exited, and how long to wait first. :class:`RestartPolicy` makes those decisions from the
strategy, the restart window and the backoff, with times passed in by the caller, as
:class:`RestartWindow` takes them; the supervisor's loop does the stopping, waiting and
starting. So the decision is tested without Trio, and a change of it touches this module only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._child import Child
from ._errors import EscalatedFailure, FinalExit
from ._intensity import RestartBackoff, RestartWindow
from ._spec import RestartType
from ._stats import ChildState

__all__ = ["LIVE", "ExitAction", "RestartPolicy", "RestartStrategy"]

#: States in which a child takes part in a group restart.
LIVE = frozenset(
    {ChildState.STARTING, ChildState.RUNNING, ChildState.HIBERNATED, ChildState.RESTARTING}
)


class RestartStrategy(enum.Enum):
    """Which children restart when one exits and is due to restart."""

    #: Only the child that exited.
    ONE_FOR_ONE = "one_for_one"
    #: Every child: the others are stopped (newest first), then all start again in order.
    #: Children that had already ended for good (terminated, or a transient one that returned)
    #: stay down, unlike OTP, which would start them again.
    ONE_FOR_ALL = "one_for_all"
    #: The child and those started after it, stopped newest first and started again in order.
    #: As with ``ONE_FOR_ALL``, those of them that had already ended for good stay down.
    REST_FOR_ONE = "rest_for_one"


class ExitAction(enum.Enum):
    """What a child's exit calls for."""

    #: It escalated (``EscalatedFailure``): the supervisor gives up at once.
    ESCALATE = "escalate"
    #: It stopped for good (``FinalExit``): forgotten, never restarted.
    STOP_FOR_GOOD = "stop for good"
    #: Its restart type wants it back: restart it, if the intensity allows.
    RESTART = "restart"
    #: Not restarted: a temporary child, or a transient one that returned.
    LEAVE = "leave"


class RestartPolicy:
    """One supervisor's restart decision: its strategy, its restart window and its backoff.

    A plain object, as :class:`RestartWindow` is: times are the caller's (Trio times in the
    supervisor), and it changes nothing but the window's count and a child's restarts in a row.
    """

    __slots__ = ("backoff", "strategy", "window")

    def __init__(
        self,
        strategy: RestartStrategy,
        max_restarts: int,
        max_seconds: float,
        backoff: RestartBackoff | None,
    ) -> None:
        self.strategy = strategy
        self.window = RestartWindow(max_restarts, max_seconds)
        self.backoff = backoff

    @staticmethod
    def on_exit(restart: RestartType, outcome: BaseException | None) -> ExitAction:
        """What the exit of a child of type ``restart`` calls for, by how it ended
        (``outcome``: the exception, or ``None`` for a normal return)."""
        if isinstance(outcome, EscalatedFailure):
            return ExitAction.ESCALATE
        if isinstance(outcome, FinalExit):
            return ExitAction.STOP_FOR_GOOD
        if restart is RestartType.PERMANENT or (
            restart is RestartType.TRANSIENT and outcome is not None
        ):
            return ExitAction.RESTART
        return ExitAction.LEAVE

    def admit(self, now: float) -> bool:
        """Count a restart at ``now`` if the intensity allows it; False means give up."""
        return self.window.admit(now)

    def group(self, children: Sequence[Child], failed: Child) -> list[Child]:
        """The children that restart with ``failed``, in start order (``children`` is every
        child, in start order): by the strategy, and of those only the live ones."""
        if self.strategy is RestartStrategy.ONE_FOR_ONE:
            return [failed]
        candidates = children
        if self.strategy is RestartStrategy.REST_FOR_ONE:
            candidates = candidates[candidates.index(failed) :]
        return [child for child in candidates if child is failed or child.state in LIVE]

    def delay(self, failed: Child, now: float) -> float:
        """Seconds to wait before restarting ``failed``, which crashed at Trio time ``now``;
        counts the restart among its restarts in a row (``reset_after`` seconds or more since
        its last restart started it, through every run of a child that hibernated and woke,
        start the count again). 0 without a backoff."""
        if self.backoff is None:
            return 0.0
        if now - failed.restarted_at >= self.backoff.reset_after:
            failed.consecutive_restarts = 0
        failed.consecutive_restarts += 1
        return self.backoff.delay(failed.consecutive_restarts)
