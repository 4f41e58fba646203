"""Run a test body where a hang fails the test instead of hanging the suite.

A stop path waits in shielded code, which no ``trio.fail_after`` can interrupt: a regression
there would hang for ever. ``run_guarded`` runs the body in a Trio run of its own (on a
``MockClock`` that jumps when idle), in a thread, and fails the test if that run has not
ended within a few seconds of wall-clock time.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

T = TypeVar("T")

#: Wall-clock seconds a guarded body may take; virtual time is free.
WALL_SECONDS = 10.0


def run_in_own_thread(run: Callable[[], T], *, wall_seconds: float = WALL_SECONDS) -> T:
    """Call ``run`` (a whole ``trio.run``) in a thread; fail the test if it has not returned
    within ``wall_seconds``, and raise what it raised."""
    outcome: list[Any] = []
    raised: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(run())
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=target, name="guarded test body", daemon=True)
    thread.start()
    thread.join(wall_seconds)
    if thread.is_alive():
        pytest.fail(f"hung: still running after {wall_seconds} s of wall-clock time")
    if raised:
        raise raised[0]
    result: T = outcome[0]
    return result


def run_guarded(body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` in a Trio run on a jumping ``MockClock``, in a thread of its own; fail the
    test if it hangs."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return run_in_own_thread(functools.partial(trio.run, body, clock=clock))
