"""What a system's shutdown says while it runs, and the deadline that caps it.

Both run on the system's timers, and only while it shuts down: they cost nothing per message.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from .._primitives.timers import Timer

if TYPE_CHECKING:
    from .._process.cell import AgentCell
    from .system import MessageSystem

__all__ = ["ShutdownWatch"]

logger = logging.getLogger("terraphim_actors")

#: Seconds an agent may hold the shutdown up before a warning names it.
HELD_UP_AFTER = 1.0
#: Agents a check names at most: the rest held up at once (idle agents stopped together, a
#: pool's members) are counted in one more line, not named one line each.
NAMED_AT_ONCE = 10
#: Seconds ``on_stop`` still gets once the shutdown deadline has passed.
GRACE_AFTER_DEADLINE = 1.0


class ShutdownWatch:
    """Watches one shutdown from its start (construction) to its end (:meth:`close`).

    It logs the start at INFO, and a WARNING, once per agent, for each agent whose stop has
    been under way for :data:`HELD_UP_AFTER` seconds: which agent, what it is handling, for how
    long, and how long it may still take (at most :data:`NAMED_AT_ONCE` at a time, and how
    many more in one line). Given a ``deadline`` (seconds), it cancels every agent
    still running once that has passed, and gives each ``on_stop`` at most
    :data:`GRACE_AFTER_DEADLINE` more seconds, so that the shutdown ends within
    ``deadline + GRACE_AFTER_DEADLINE``.
    """

    def __init__(self, system: MessageSystem, deadline: float | None) -> None:
        self._system = system
        self._started_at = system.clock.current_time()
        #: Trio time by which every agent is over (``inf`` until the deadline has passed).
        self.over_by = math.inf
        self._warned: set[AgentCell] = set()
        running = len(_running(system))
        logger.info(
            "message system shutting down: stopping %d agent%s%s",
            running,
            "" if running == 1 else "s",
            "" if deadline is None else f" within {deadline:g} s",
        )
        self._deadline_timer: Timer | None = None
        if deadline is not None:
            self._deadline_timer = system.timers.call_after(deadline, self._deadline_passed)
        self._check_timer = system.timers.call_after(HELD_UP_AFTER, self._check)

    def close(self) -> None:
        """The shutdown is over: stop watching."""
        self._check_timer.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        logger.info(
            "message system shut down in %.1f s",
            self._system.clock.current_time() - self._started_at,
        )

    def cut_short(self, why: str) -> None:
        """Cancel every agent still running now, as the deadline does when it passes (a second
        signal asks for this, see ``handle_signals``); ``why`` ends the shutdown's name in the
        log: ``"deadline passed"``, ``"cut short by a second signal"``."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        running = _running(self._system)
        self.over_by = min(self.over_by, self._system.clock.current_time() + GRACE_AFTER_DEADLINE)
        if running:
            logger.warning(
                "message system shutdown %s: cancelling %d agent%s still running"
                " (on_stop gets %g s more)",
                why,
                len(running),
                "" if len(running) == 1 else "s",
                GRACE_AFTER_DEADLINE,
            )
        # An agent that runs no instance now (asleep, or not started yet) is cut short as
        # its instance begins, the system's ``over_by`` telling it.
        for cell in running:
            cell.cut_short(self.over_by)

    def _deadline_passed(self) -> None:
        self.cut_short("deadline passed")

    def _check(self) -> None:
        now = self._system.clock.current_time()
        next_check = now + HELD_UP_AFTER
        named = unnamed = 0
        for cell in _running(self._system):
            since = cell.stop_requested_at
            if since is None or cell in self._warned:
                continue
            if now >= since + HELD_UP_AFTER:
                self._warned.add(cell)
                if named == NAMED_AT_ONCE:
                    unnamed += 1
                    continue
                named += 1
                logger.warning(
                    "shutdown held up by %r for %.1f s, handling %s; it may take %.1f s more",
                    cell.id,
                    now - since,
                    cell.activity,
                    max(0.0, min(cell.stop_deadline, self.over_by) - now),
                )
            else:
                next_check = min(next_check, since + HELD_UP_AFTER)
        if unnamed:
            logger.warning(
                "shutdown held up by %d more agent%s, each stopping for %.1f s or more",
                unnamed,
                "" if unnamed == 1 else "s",
                HELD_UP_AFTER,
            )
        self._check_timer = self._system.timers.call_at(next_check, self._check)


def _running(system: MessageSystem) -> list[AgentCell]:
    return [cell for cell in system.live_cells() if cell.has_instance]
