"""One task per system that fires every timer, so a timer costs a heap entry, not a task."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import trio

from .._core.checks import check_seconds
from .._core.threads import check_thread, current_thread_id

__all__ = ["Timer", "TimerService"]


class Timer:
    """A callback scheduled for a Trio time; :meth:`cancel` stops it from firing."""

    __slots__ = ("_callback", "_service", "deadline")

    def __init__(self, service: TimerService, deadline: float, callback: Callable[[], None]):
        self._service = service
        self._callback: Callable[[], None] | None = callback
        #: Trio time at which it fires.
        self.deadline = deadline

    def __repr__(self) -> str:
        state = "pending" if self.pending else "done"
        return f"<Timer at {self.deadline:.3f} {state}>"

    @property
    def pending(self) -> bool:
        """True until it fires or is cancelled."""
        return self._callback is not None

    def cancel(self) -> bool:
        """Stop the timer. Returns True if it had not fired (nor been cancelled) yet.

        Raises:
            WrongThread: called from a thread other than its service's, whose heap it would
                change under the service's feet (the timer stays as it was).
        """
        check_thread(self._service.thread_id, "timer.cancel", sync=True)
        return self.discard()

    def discard(self) -> bool:
        """:meth:`cancel` without its thread check, for the library's own timers, which it
        cancels in the system's thread: a call's deadline timer, once on every call."""
        if self._callback is None:
            return False
        self._callback = None
        self._service._forget_one()
        return True

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class TimerService:
    """A heap of timers and the one task that fires them when their time comes.

    Callbacks run in the service's task: they must be quick and must not block (they post a
    message, they do not await one). It belongs to the thread that made it, its Trio run's.
    """

    def __init__(self) -> None:
        #: The thread whose Trio run the service serves: the only one that may cancel a timer.
        self.thread_id = current_thread_id()
        self._heap: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._cancelled = 0
        self._wakeup = trio.Event()
        self._sleeping_until = math.inf

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_after(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` in ``delay`` seconds (Trio's clock).

        Raises:
            InvalidConfig: ``delay`` is negative or not a number.
        """
        check_seconds("delay", delay, allow_zero=True)
        return self.call_at(trio.current_time() + delay, callback)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` at Trio time ``deadline``."""
        timer = Timer(self, deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._sequence), timer))
        if deadline < self._sleeping_until:
            self._wakeup.set()
        return timer

    async def run(self) -> None:
        """Fire timers as they come due, until cancelled."""
        heap = self._heap
        while True:
            current = trio.current_time()
            # Cancelled timers at the top go too, due or not, so as not to wake up for them.
            while heap and (heap[0][0] <= current or not heap[0][2].pending):
                timer = heapq.heappop(heap)[2]
                if timer.pending:
                    timer._fire()
                else:
                    self._cancelled -= 1
            self._sleeping_until = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    def _forget_one(self) -> None:
        """Count a cancelled timer; rebuild the heap once cancelled entries dominate it."""
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap[:] = [entry for entry in self._heap if entry[2].pending]
            heapq.heapify(self._heap)
            self._cancelled = 0
