"""JournalThread: a blocking call run in the journal's own thread, its outcome handed back."""

from __future__ import annotations

import threading

import outcome
import pytest
import trio

from terraphim_actors.journal._thread import JournalThread


async def test_a_call_returns_what_the_function_returned_from_another_thread() -> None:
    thread = JournalThread("test")
    try:
        with trio.fail_after(5):
            name = await thread.run(lambda: threading.current_thread().name)
    finally:
        thread.stop()
    assert name == "test"


async def test_a_call_raises_what_the_function_raised() -> None:
    thread = JournalThread("test")

    def fail() -> None:
        raise ValueError("disk on fire")

    try:
        with trio.fail_after(5), pytest.raises(ValueError, match="disk on fire"):
            await thread.run(fail)
    finally:
        thread.stop()


async def test_then_sees_the_outcome_in_the_trio_thread_before_the_caller_resumes() -> None:
    thread = JournalThread("test")
    seen: list[tuple[outcome.Outcome[int], bool]] = []

    def then(result: outcome.Outcome[int]) -> None:
        seen.append((result, threading.current_thread() is threading.main_thread()))

    try:
        with trio.fail_after(5):
            answer = await thread.run(lambda: 42, then=then)
    finally:
        thread.stop()
    assert answer == 42
    assert seen == [(outcome.Value(42), True)]


async def test_a_cancelled_call_runs_to_its_end_and_then_the_cancellation_is_delivered() -> None:
    thread = JournalThread("test")
    release = threading.Event()
    ended: list[str] = []

    def slow() -> str:
        release.wait(5)
        return "written"

    try:
        with trio.fail_after(5):
            with trio.CancelScope() as scope:
                scope.cancel()
                thread_call = thread.run(slow)
                trio.lowlevel.current_trio_token().run_sync_soon(release.set)
                ended.append(await thread_call)
                await trio.lowlevel.checkpoint()
                ended.append("not cancelled")
    finally:
        thread.stop()
    assert ended == ["written"]
    assert scope.cancelled_caught
