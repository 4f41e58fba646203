"""Regressions from a second review of the delivery layer and the router: each test is a case
an earlier version of the code got wrong."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from agents import Recorder, Runner

from terraphim_actors import (
    CircuitBreakerConfig,
    CircuitState,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentStopped, CallToSelf, DeliveryFailed

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE
EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE


def balanced(system: MessageSystem) -> None:
    stats = system.delivery.get_stats()
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
    assert stats.pending == 0, stats
    assert stats.sent == settled, stats


# -- A. backoff overflows after ~1024 retries and kills the router task ----------------------


async def test_many_retries_capped_by_max_retry_delay_do_not_crash_the_system(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_retry_delay caps the wait, so a large max_retries is a way to "keep trying for a
    while". The uncapped `multiplier ** (n - 1)` overflows a float at n = 1025 and the
    OverflowError escapes from the router's task, taking the whole system down."""
    config = MessageSystemConfig(
        delivery=DeliveryConfig(
            max_retries=2000, retry_delay=0.01, max_retry_delay=0.01, jitter=0.0
        ),
        router=RouterConfig(circuit_breaker=None),
    )
    async with open_message_system(config) as system:
        forever = MessageOptions(timeout=1e9)
        await system.send_message(cast(None, "x", forever, recipient="nobody"))
        await trio.sleep(60)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
        balanced(system)


# -- B. a pool's only member cannot cast to its own pool -------------------------------------


async def test_member_of_a_one_member_pool_can_cast_to_its_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cast to oneself is fine (Erlang's `self() ! msg`): only a call would wait on itself.
    The pool skips the sender for every kind of message, so the only member of a pool gets
    AgentNotFound (at most once) for a cast to its own pool."""
    config = MessageSystemConfig(delivery=DeliveryConfig(guarantee=AT_MOST_ONCE))
    async with open_message_system(config) as system:
        inbox: list[Any] = []
        pool = await system.spawn_pool(Runner, inbox, size=1, name="solo")

        async def cast_to_pool(ctx: Context) -> None:
            await pool.info("note to self")

        await pool.call(cast_to_pool)
        await trio.sleep(1)
        assert inbox == ["note to self"]


# -- C. stopping a pool: the message a member had in hand is retried into the void ----------


async def test_cast_in_hand_when_its_pool_is_stopped_is_an_agent_stopped_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`system.stop(pool)` stops the pool for good. The cast a member was handling (cut short
    at its shutdown time) is, as for `system.stop(agent)`, an AGENT_STOPPED dead letter once
    stop returns. Members are stopped as for a restart, so it is scheduled for a retry, then
    burns its retries against NOT_FOUND and is filed as RETRIES_EXHAUSTED."""
    async with open_message_system() as system:
        pool = await system.spawn_pool(Runner, size=1, name="p", shutdown=1.0)

        async def long_job(ctx: Context) -> None:
            await trio.sleep(100)

        await pool.cast(long_job)
        await trio.testing.wait_all_tasks_blocked()
        await system.stop(pool)
        assert system.delivery.get_stats().pending == 0
        assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.AGENT_STOPPED]


# -- F. exactly-once: a deferred reply whose caller gave up is not kept for the resend ------


async def test_exactly_once_resend_of_a_timed_out_deferred_call_gets_the_reply(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """As for a handler that returns its reply (test_delivery_regressions #10): the caller
    times out, the agent completes the call (here by a deferred reply), and a resend of the
    same message id must get that reply without the work being done again. DeferredReply.reply
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
    again.id = first.id
    await system.send_message(again)
    assert await again_reply == "charged"
    assert len(runs) == 1


# -- C2. a retry to an agent stopped for good meanwhile burns its retries on NOT_FOUND -----


class Boom(Exception):
    """What a failing handler raises."""


async def test_retry_of_a_cast_to_an_agent_stopped_meanwhile_is_an_agent_stopped_letter(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A cast crashed its handler and waits for its retry; the agent is then stopped for good.
    Its id will never be taken again, so the retry is a cast to a stopped agent: README, "a cast
    to it is an AGENT_STOPPED dead letter" (as regression 4b made it for queued casts). The
    retry instead looks the id up, finds nobody, retries NOT_FOUND until RETRIES_EXHAUSTED."""

    async def crash(ctx: Context) -> None:
        raise Boom("once")

    ref = await system.spawn(Runner)
    await ref.cast(crash)
    await trio.testing.wait_all_tasks_blocked()
    assert len(system.delivery.get_retry_candidates()) == 1
    await system.stop(ref)
    await trio.sleep(5)
    assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.AGENT_STOPPED]


# -- C3. a call to a stopped pool is retried as if its members were not started yet --------


async def test_call_to_a_stopped_pool_raises_agent_stopped_at_once(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """README: "An agent that has stopped for good refuses at once ... a call raises
    AgentStopped" (regression 4 for a plain agent). A pool stopped with system.stop is
    treated as a missing recipient instead: the call is retried for 0.7 s and then fails
    with DeliveryFailed(AgentNotFound)."""
    pool = await system.spawn_pool(Recorder, [], size=2, name="p")
    await system.stop(pool)
    started = trio.current_time()
    with pytest.raises(AgentStopped):
        await pool.call("too late")
    assert trio.current_time() == started


# -- D. the pool's fallback names the calling member itself --------------------------------


async def test_member_calling_its_pool_whose_other_member_is_open_is_not_told_call_to_self(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression 14 made a pool skip the member that calls it. When every other member's
    circuit is open, the fallback ("name the one that lets a trial through first") picks among
    all members with a breaker, the caller included; a caller whose own breaker is closed
    (one old failure) has the smallest reopens_at, so the call fails with CallToSelf instead
    of the open circuit of the other member (DeliveryFailed / CircuitOpen)."""
    breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=10.0)
    config = MessageSystemConfig(
        max_restarts=100,
        delivery=DeliveryConfig(jitter=0.0),
        router=RouterConfig(circuit_breaker=breaker),
    )

    def crash(ctx: Context) -> None:
        raise Boom("crash")

    async with open_message_system(config) as system:
        pool = await system.spawn_pool(Runner, size=2, name="p")
        m0, m1 = pool.members
        for member, times in ((m0, 1), (m1, 2)):
            for _ in range(times):
                with pytest.raises(Exception):  # noqa: B017,PT011 - CallFailed
                    await member.call(crash)
        await trio.testing.wait_all_tasks_blocked()
        assert system.router.stats().open_circuits == 1

        async def ask_the_pool(ctx: Context) -> Any:
            try:
                return await pool.call(lambda ctx: "inner", timeout=1.0)
            except Exception as error:
                return error

        outcome = await m0.call(ask_the_pool)
        assert not isinstance(outcome, CallToSelf), outcome
        assert isinstance(outcome, DeliveryFailed), outcome


# -- G. a call waiting for its retry is not among the retry candidates ----------------------


async def test_a_call_waiting_for_a_retry_is_listed_in_the_retry_candidates(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue: `get_retry_candidates()` lists "what is waiting for a retry, and when", and
    RouterStats.retries_waiting counts it. A call to a name not spawned yet waits for its
    retry in the caller's task, invisible to both."""
    async with trio.open_nursery() as nursery:
        envelope, reply = call(None, "hello", 5.0, recipient="later")
        nursery.start_soon(system.send_message, envelope)
        await trio.testing.wait_all_tasks_blocked()
        waiting = system.delivery.get_retry_candidates()
        retries_waiting = system.router.stats().retries_waiting
        await system.spawn(Recorder, [], name="later")
    assert await reply == "hello"
    assert [candidate.envelope for candidate in waiting] == [envelope]
    assert retries_waiting == 1


# -- H. a system notification that bypassed an open circuit closes it ----------------------


async def test_a_timer_info_handled_while_the_circuit_is_open_does_not_close_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Notifications bypass an open circuit (so that a Down or a timer reaches the agent), but
    their success still counts: one timer tick handled 1 s after the circuit opened closes it,
    skipping the reset timeout and the half-open trial (closed -> open -> half-open after
    reset_timeout -> closed on a trial's success). An agent with a periodic timer can then
    never be protected by its breaker."""
    breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=30.0)
    config = MessageSystemConfig(
        max_restarts=100,
        delivery=DeliveryConfig(guarantee=AT_MOST_ONCE),
        router=RouterConfig(circuit_breaker=breaker),
    )

    def crash(ctx: Context) -> None:
        raise Boom("crash")

    async with open_message_system(config) as system:
        inbox: list[Any] = []
        ref = await system.spawn(Runner, inbox)
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017,PT011 - CallFailed
                await ref.call(crash)
        assert system.router.stats().circuits[ref.id] is CircuitState.OPEN
        watcher = await system.spawn(Runner)
        await watcher.call(lambda ctx: ctx.send_after(1.0, "tick", to=ref))
        await trio.sleep(2)
        assert inbox == ["tick"]
        assert system.router.stats().circuits[ref.id] is CircuitState.OPEN


# -- I. exactly-once through a pool: a resend while the first is in flight runs twice -------


async def test_exactly_once_resend_through_a_pool_while_the_first_is_in_hand_runs_once(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """The classic exactly-once client: its call times out while the handler works, so it
    resends the same message id. To one agent, the resend queues behind the first and gets
    its reply (regression 10). Through a pool, whose members share one window, the resend
    goes to another member, which runs the handler a second time: the window only knows
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
    again.id = first.id
    await system.send_message(again)
    assert await again_reply == "charged"
    assert len(runs) == 1


# -- J. a pool member that stops its own pool deadlocks (and with it the system's exit) ------

_STOP_OWN_POOL = """
import sys
import trio, trio.testing
sys.path.insert(0, "tests")
from agents import Runner
from terraphim_actors import open_message_system
from terraphim_actors.errors import CallToSelf

async def main():
    async with open_message_system() as system:
        pool = await system.spawn_pool(Runner, size=2, name="p", shutdown=1.0)

        async def stop_own_pool(ctx):
            try:
                await ctx.system.stop(pool)
            except CallToSelf:
                return "CallToSelf"
            return "stopped"

        try:
            outcome = await pool.members[0].call(stop_own_pool, timeout=10)
        except Exception as error:
            outcome = type(error).__name__
        print(outcome, flush=True)
    print("exited", flush=True)

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


def test_a_pool_member_stopping_its_own_pool_is_told_call_to_self() -> None:
    """`system.stop(ref)` refuses an agent's own stop with CallToSelf ("use ctx.stop()"), since
    it would wait for itself. `system.stop(pool)` from a member of that pool has no such check:
    the root waits (shielded) for the pool's supervisor, which waits (shielded) for the member,
    which is waiting for the root. The caller's call times out, and leaving
    `open_message_system` never returns. Run in a subprocess so that the hang fails the test."""
    import subprocess
    import sys

    try:
        result = subprocess.run(
            [sys.executable, "-c", _STOP_OWN_POOL],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as hung:
        out = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout
        pytest.fail(f"the system never exited; printed before the hang: {out!r}")
    assert result.stdout.split() == ["CallToSelf", "exited"], result.stderr[-2000:]
