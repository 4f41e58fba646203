"""Small child tasks shared by the supervisor tests.

Every helper child writes what happens to it into a ``Log``: ``"start a"`` when a run begins,
``"crash a"`` just before it raises ``Crash``, ``"return a"`` when it returns by itself,
``"stop a"`` when its supervisor asks it to stop, ``"end a"`` when it finishes after that
request, and ``"cancel a"`` when it is cancelled. The log also keeps the Trio time of each event.

Build children with ``functools.partial(worker, log, "a", ...)``: the partial keeps the
``task_status`` parameter, so the supervisor waits for the child's ``started``.
"""

from __future__ import annotations

from typing import Any

import trio


class Crash(Exception):
    """What a helper child raises when it is told to crash."""


class Unprintable:
    """A value (a payload, a child id, an error's argument) whose repr raises: quoting it must
    not replace the error being reported."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Log(list[str]):
    """Events in the order they happened; ``times`` has the Trio time of each."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[str, float]] = []

    def add(self, event: str) -> None:
        self.append(event)
        self.times.append((event, trio.current_time()))

    def when(self, event: str) -> list[float]:
        """The Trio times at which ``event`` happened."""
        return [time for logged, time in self.times if logged == event]


class Handle:
    """What a helper child reports through ``task_status.started``: a way to ask it to stop."""

    def __init__(self, log: Log, name: str) -> None:
        self.log = log
        self.name = name
        self.asked = trio.Event()

    def __repr__(self) -> str:
        return f"<Handle {self.name}>"

    def stop(self) -> None:
        self.log.add(f"stop {self.name}")
        self.asked.set()


def ask_to_stop(handle: Any) -> None:
    """A ``stop`` hook for helper children."""
    handle.stop()


def failing_stop(handle: Any) -> None:
    """A ``stop`` hook that raises instead of asking the child to stop."""
    raise Crash(f"stop hook of {handle.name}")


async def worker(
    log: Log,
    name: str,
    *,
    start_delay: float = 0.0,
    fail_start: bool = False,
    fails_to_start: list[bool] | None = None,
    crashes: list[float] | None = None,
    crash_after: float | None = None,
    return_after: float | None = None,
    linger: float = 0.0,
    raise_when_stopped: bool = False,
    raise_when_cancelled: bool = False,
    task_status: trio.TaskStatus[Handle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A child that records its life in ``log`` and reports a ``Handle`` once started.

    Args:
        start_delay: seconds before it reports ``started``.
        fail_start: raise ``Crash`` before it reports ``started``.
        fails_to_start: shared across runs: each run pops the first item and, if it is True,
            fails to start as with ``fail_start``.
        crashes: shared across runs: each run pops the first delay and crashes after it; once
            the list is empty, runs last until stopped.
        crash_after: every run crashes after this many seconds.
        return_after: every run returns normally after this many seconds.
        linger: seconds it keeps running after it was asked to stop (``math.inf``: forever).
        raise_when_stopped: raise ``Crash`` instead of finishing when asked to stop.
        raise_when_cancelled: raise ``Crash`` instead of ``Cancelled`` when cancelled.
    """
    log.add(f"start {name}")
    handle = Handle(log, name)
    try:
        if start_delay:
            await trio.sleep(start_delay)
        if fail_start or (fails_to_start and fails_to_start.pop(0)):
            log.add(f"crash {name}")
            raise Crash(f"{name} failed to start")
        task_status.started(handle)
        if crashes:
            await trio.sleep(crashes.pop(0))
            log.add(f"crash {name}")
            raise Crash(name)
        if crash_after is not None:
            await trio.sleep(crash_after)
            log.add(f"crash {name}")
            raise Crash(name)
        if return_after is not None:
            await trio.sleep(return_after)
            log.add(f"return {name}")
            return
        await handle.asked.wait()
        if raise_when_stopped:
            raise Crash(f"{name} while stopping")
        await trio.sleep(linger)
        log.add(f"end {name}")
    except trio.Cancelled:
        log.add(f"cancel {name}")
        if raise_when_cancelled:
            raise Crash(f"{name} when cancelled") from None
        raise


async def plain(log: Log, name: str) -> None:
    """A child without ``task_status``: it counts as started as soon as it is called."""
    log.add(f"start {name}")
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        log.add(f"cancel {name}")
        raise


def starts(log: Log) -> list[str]:
    """The names of the children in the order they started (each run counts)."""
    return [event.removeprefix("start ") for event in log if event.startswith("start ")]
