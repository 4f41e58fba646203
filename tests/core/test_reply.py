"""The reply slot of a call: answered once, woken at once, late answers dropped."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import ReplyHandle
from terraphim_actors.errors import CallTimeout, ReplyAlreadySent


async def await_into(handle: ReplyHandle, outcomes: list[Any]) -> None:
    """Await ``handle`` and record its value, or the error it raised."""
    try:
        outcomes.append(await handle)
    except Exception as error:
        outcomes.append(error)


class TestAnswering:
    async def test_reply_wakes_the_waiting_caller_with_the_value(self) -> None:
        """A caller blocked on the handle gets the value passed to ``reply``."""
        handle = ReplyHandle()
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(await_into, handle, outcomes)
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == []
            assert handle.reply("answer") is True
        assert outcomes == ["answer"]

    async def test_fail_makes_the_caller_raise_that_error(self) -> None:
        """A caller blocked on the handle raises the very error passed to ``fail``."""
        handle = ReplyHandle()
        error = KeyError("no such key")
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(await_into, handle, outcomes)
            await trio.testing.wait_all_tasks_blocked()
            assert handle.fail(error) is True
        assert outcomes == [error]
        assert outcomes[0] is error

    async def test_reply_before_await_is_returned(self) -> None:
        """An answer given before the caller awaits is returned at once."""
        handle = ReplyHandle()
        handle.reply(7)
        assert await handle == 7

    async def test_fail_before_await_is_raised(self) -> None:
        """A failure given before the caller awaits is raised when it does."""
        handle = ReplyHandle()
        handle.fail(ValueError("bad request"))
        with pytest.raises(ValueError, match="bad request"):
            await handle

    async def test_reply_given_in_time_survives_a_late_await(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A reply accepted before the deadline is returned even if awaited after it."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        assert handle.reply("early") is True
        await trio.sleep(5.0)
        assert await handle == "early"

    def test_pending_until_answered(self) -> None:
        """A handle is pending until it is answered, then no longer."""
        handle = ReplyHandle()
        assert handle.pending
        handle.reply(None)
        assert not handle.pending
        assert not handle.abandoned

    async def test_wait_unbounded_ignores_the_handles_deadline(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``wait_unbounded`` leaves timing to the caller's own scopes."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        outcomes: list[Any] = []

        async def waiter() -> None:
            outcomes.append(await handle.wait_unbounded())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(10.0)
            handle.reply("late but awaited")
        assert outcomes == ["late but awaited"]


class TestAnsweringTwice:
    def test_second_reply_raises(self) -> None:
        """A handle answered with ``reply`` refuses another reply."""
        handle = ReplyHandle()
        handle.reply(1)
        with pytest.raises(ReplyAlreadySent):
            handle.reply(2)

    def test_fail_after_reply_raises(self) -> None:
        """A handle answered with ``reply`` refuses a failure."""
        handle = ReplyHandle()
        handle.reply(1)
        with pytest.raises(ReplyAlreadySent):
            handle.fail(RuntimeError("too late"))

    def test_reply_after_fail_raises(self) -> None:
        """A handle answered with ``fail`` refuses a reply."""
        handle = ReplyHandle()
        handle.fail(RuntimeError("failed"))
        with pytest.raises(ReplyAlreadySent):
            handle.reply(1)

    async def test_first_answer_is_the_one_delivered(self) -> None:
        """A rejected second answer does not replace the first."""
        handle = ReplyHandle()
        handle.reply("first")
        with pytest.raises(ReplyAlreadySent):
            handle.reply("second")
        assert await handle == "first"


class TestGivingUp:
    async def test_await_raises_call_timeout_at_the_deadline(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With no answer, awaiting raises CallTimeout exactly at the deadline."""
        deadline = trio.current_time() + 2.0
        handle = ReplyHandle(deadline)
        with pytest.raises(CallTimeout):
            await handle
        assert trio.current_time() == pytest.approx(deadline)

    async def test_reply_after_timeout_is_dropped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once the caller timed out, ``reply`` returns False and the handle is abandoned."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        with pytest.raises(CallTimeout):
            await handle
        assert handle.abandoned
        assert handle.reply("too late") is False

    async def test_fail_after_timeout_is_dropped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once the caller timed out, ``fail`` returns False instead of raising."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        with pytest.raises(CallTimeout):
            await handle
        assert handle.fail(RuntimeError("too late")) is False

    async def test_reply_after_the_waiter_was_cancelled_is_dropped(self) -> None:
        """A caller cancelled while waiting abandons the handle; a late reply returns False."""
        handle = ReplyHandle()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.wait)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert handle.abandoned
        assert not handle.pending
        assert handle.reply("nobody listens") is False

    async def test_repeated_answers_after_giving_up_are_all_dropped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After the caller gave up, every answer is dropped, none raises ReplyAlreadySent."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        with pytest.raises(CallTimeout):
            await handle
        assert handle.reply(1) is False
        assert handle.reply(2) is False
        assert handle.fail(RuntimeError("late")) is False

    async def test_awaiting_again_after_a_timeout_times_out_again(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A handle that timed out keeps raising CallTimeout, never hangs or returns."""
        handle = ReplyHandle(trio.current_time() + 1.0)
        with pytest.raises(CallTimeout):
            await handle
        handle.reply("dropped")
        with pytest.raises(CallTimeout):
            await handle

    def test_abandon_only_affects_a_pending_handle(self) -> None:
        """Abandoning an answered handle changes nothing: the answer stands."""
        handle = ReplyHandle(math.inf)
        handle.reply("kept")
        handle.abandon()
        assert not handle.abandoned


class TestExpire:
    async def test_expire_wakes_the_waiter_with_call_timeout(self) -> None:
        """``expire`` (the caller's deadline timer) ends a waiting caller's wait with
        CallTimeout and drops any later answer."""
        handle = ReplyHandle()
        outcome: list[BaseException] = []

        async def caller() -> None:
            try:
                await handle.wait_unbounded()
            except CallTimeout as timeout:
                outcome.append(timeout)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            handle.expire()
        assert len(outcome) == 1
        assert handle.abandoned
        assert handle.reply("too late") is False

    def test_expire_leaves_an_answer_standing(self) -> None:
        """A handle answered before its deadline timer fires keeps its answer."""
        handle = ReplyHandle()
        handle.reply("in time")
        handle.expire()
        assert handle.replied
        assert handle.value == "in time"


class TestOneWaiter:
    async def test_a_second_waiter_is_refused(self) -> None:
        """Only one task may wait for a reply; a second gets ``trio.BusyResourceError``."""
        handle = ReplyHandle()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.wait_unbounded)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await handle.wait_unbounded()
            handle.reply("for the first")
