"""Exactly-once delivery across recipients and resends: each recipient handles a message id
once, and a resend of a call the handler already answered gets that answer without the work
being done again (to one agent or through a pool, whether the handler returned its reply or
deferred it). The window's own rules are in ``test_delivery.py`` (``TestExactlyOnce``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing
from agents import Named, Runner, lenient_config

from terraphim_actors import (
    AgentRef,
    Context,
    DeliveryGuarantee,
    Envelope,
    MessageOptions,
    MessageSystem,
    call,
    cast,
    open_message_system,
)

EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE


class Table:
    """A custom router: recipient -> refs; counts how often it was asked."""

    def __init__(self) -> None:
        self.routes: dict[object, list[AgentRef]] = {}

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        return self.routes.get(envelope.recipient, [])


class TestCopiesFannedOutToPoolMembers:
    async def test_exactly_once_copies_fanned_out_to_two_pool_members_both_get_handled(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """A custom router names two agents: "each gets its own copy (same message id)". Dedup is
        per recipient; two different members are two recipients. With the pool's shared window
        the second member's copy is suppressed as a duplicate and never handled."""
        table = Table()
        async with open_message_system(lenient_config(router=table)) as system:
            log: list[str] = []
            pool = await system.spawn_pool(Named, "m", log, size=2, name="p")
            table.routes["both"] = pool.members
            once = MessageOptions(guarantee=EXACTLY_ONCE)
            await system.send_message(cast(None, "x", recipient="both", options=once))
            await trio.sleep(1)
            assert len(log) == 2
            assert system.delivery.get_stats().duplicates_suppressed == 0


class TestResendOfACallWhoseCallerGaveUp:
    """The classic exactly-once client: its call times out while the handler works, so it
    resends the same message id, and must get the answer of the one run of the handler."""

    async def test_exactly_once_retry_of_a_timed_out_call_gets_the_reply(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The classic exactly-once case: the caller times out while the handler runs, then
        resends the same message id. The handler completed (so it is not run again); the retry
        must get the reply the handler returned, not DeliveryFailed("answered before, by a
        deferred reply") -- the handler returned a value, nothing was deferred."""
        runs: list[float] = []

        async def slow(ctx: Context) -> str:
            runs.append(trio.current_time())
            await trio.sleep(2)
            return "charged"

        once = MessageOptions(guarantee=EXACTLY_ONCE)
        await system.spawn(Runner, name="payments")
        first, first_reply = call(None, slow, 1.0, recipient="payments", options=once)
        await system.send_message(first)
        with pytest.raises(Exception):  # noqa: B017,PT011 - CallTimeout
            await first_reply
        await trio.sleep(5)  # the handler completes meanwhile
        again, again_reply = call(None, slow, 5.0, recipient="payments", options=once)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply == "charged"
        assert len(runs) == 1

    async def test_exactly_once_resend_of_a_timed_out_deferred_call_gets_the_reply(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """As for a handler that returns its reply (the first test of this class): the caller times
        out, the agent completes the call (here by a deferred reply), and a resend of the same
        message id must get that reply without the work being done again. DeferredReply.reply
        returns early when the first caller gave up, and never remembers the value."""
        runs: list[float] = []

        async def slow_deferred(ctx: Context) -> None:
            runs.append(trio.current_time())
            promise = ctx.defer()

            async def later() -> None:
                await trio.sleep(2)
                await promise.reply("charged")

            ctx.start_soon(later)

        once = MessageOptions(guarantee=EXACTLY_ONCE)
        await system.spawn(Runner, name="payments")
        first, first_reply = call(None, slow_deferred, 1.0, recipient="payments", options=once)
        await system.send_message(first)
        with pytest.raises(Exception):  # noqa: B017,PT011 - CallTimeout
            await first_reply
        await trio.sleep(5)  # the deferred reply is given meanwhile
        again, again_reply = call(None, slow_deferred, 5.0, recipient="payments", options=once)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply == "charged"
        assert len(runs) == 1

    async def test_exactly_once_resend_through_a_pool_while_the_first_is_in_hand_runs_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The classic exactly-once client: its call times out while the handler works, so it
        resends the same message id. To one agent, the resend queues behind the first and gets its
        reply (the first test of this class). Through a pool, whose members share one window, the
        resend goes to another member, which runs the handler a second time: the window only knows
        completed messages, and the first is still in hand."""
        runs: list[float] = []

        async def slow(ctx: Context) -> str:
            runs.append(trio.current_time())
            await trio.sleep(2)
            return "charged"

        once = MessageOptions(guarantee=EXACTLY_ONCE)
        await system.spawn_pool(Runner, size=2, name="payments")
        first, first_reply = call(None, slow, 1.0, recipient="payments", options=once)
        await system.send_message(first)
        with pytest.raises(Exception):  # noqa: B017,PT011 - CallTimeout
            await first_reply
        again, again_reply = call(None, slow, 5.0, recipient="payments", options=once)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply == "charged"
        assert len(runs) == 1
