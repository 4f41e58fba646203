"""Regressions found in review of the delivery layer and the router.

Each test states what the contract (DESIGN.md, the README, the delivery accounting) promises,
in a case the first version of the code got wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from agents import Recorder, Runner, busy_for, hold_forever

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    Down,
    Envelope,
    LoadBalancing,
    MailboxConfig,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentStopped, CircuitOpen

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE
AT_LEAST_ONCE = DeliveryGuarantee.AT_LEAST_ONCE
EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE


class Boom(Exception):
    """What a failing handler raises."""


class Table:
    """A custom router: recipient -> refs; counts how often it was asked."""

    def __init__(self) -> None:
        self.routes: dict[object, list[AgentRef]] = {}

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        return self.routes.get(envelope.recipient, [])


def config(
    *,
    guarantee: DeliveryGuarantee = AT_LEAST_ONCE,
    breaker: CircuitBreakerConfig | None = None,
    router: Any = None,
    **delivery: Any,
) -> MessageSystemConfig:
    delivery.setdefault("jitter", 0.0)
    return MessageSystemConfig(
        max_restarts=100,
        delivery=DeliveryConfig(guarantee=guarantee, **delivery),
        router=RouterConfig(circuit_breaker=breaker, custom_router=router),
    )


def balanced(system: MessageSystem) -> None:
    """The accounting identity of DeliveryStats, and nothing left pending."""
    stats = system.delivery.get_stats()
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
    assert stats.pending == 0, stats
    assert stats.sent == settled, stats


class Named(Agent):
    """Replies / records with the name it was given."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append(self.name)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "fail":
            raise Boom("fail")
        if message == "hang":
            await trio.sleep_forever()
        self.log.append(self.name)
        return self.name


# -- 1. custom router: a retried message fans out, but was counted as sent once ------------


async def test_custom_router_retry_fan_out_keeps_the_accounting_balanced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message the custom router first sends nowhere is retried; on the retry the router
    names two agents and each gets a copy. Every copy is a message to settle, so `sent` must
    count it: `sent == acknowledged + ... + pending` with `pending == 0` at the end."""
    table = Table()
    async with open_message_system(config(router=table)) as system:
        logs: list[list[tuple[str, Any]]] = [[], []]
        await system.send_message(cast(None, "later", recipient="all"))
        table.routes["all"] = [await system.spawn(Recorder, log) for log in logs]
        await trio.sleep(1)
        assert logs == [[("cast", "later")]] * 2
        balanced(system)  # sent == 1, acknowledged == 2, pending == -1


# -- 2. custom router: a call's retry bypasses the router -----------------------------------


async def test_call_routed_nowhere_is_retried_through_the_custom_router(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """MessageRouter's contract: "A retry of a message it routed nowhere asks it again". A
    call routed nowhere at first must reach the agent the router names later, as a cast does
    (test_router.test_retry_reaches_the_agent_the_router_names_later)."""
    table = Table()
    async with open_message_system(config(router=table)) as system:
        envelope, handle = call(None, "hello", 5.0, recipient="later")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.send_message, envelope)
            await trio.testing.wait_all_tasks_blocked()
            table.routes["later"] = [await system.spawn(Recorder, [])]
        assert await handle == "hello"


# -- 3. pool: a half-open member whose trials are taken is not skipped ----------------------


async def test_pool_skips_a_half_open_member_that_admits_no_more_trials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue: "instances whose circuit is open are skipped". A half-open member whose one
    trial is in flight refuses like an open one, so the pool must pass it over while another
    member is healthy; the sender must never see CircuitOpen."""
    breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0)
    async with open_message_system(config(guarantee=AT_MOST_ONCE, breaker=breaker)) as system:
        log: list[str] = []
        pool = await system.spawn_pool(
            Named, "x", log, size=2, name="p", strategy=LoadBalancing.ROUND_ROBIN
        )
        first = pool.members[0]
        with pytest.raises(Exception):  # noqa: B017,PT011 - CallFailed: the circuit opens
            await first.call("fail")
        await trio.sleep(11)  # half-open now
        refused = 0
        for i in range(6):
            try:
                pool.cast_nowait(i)
            except CircuitOpen:
                refused += 1
        assert refused == 0


# -- 4. call to an agent stopped for good: not "an error at once" ---------------------------


async def test_call_to_a_stopped_agent_raises_agent_stopped_at_once_by_default(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """DESIGN: a call to an agent that died gets an error at once (Erlang's noproc); the issue
    retries calls only for a missing recipient "(not yet started or restarting)", a full
    mailbox or an open circuit. Under the default guarantee, a call to an agent stopped for
    good must raise AgentStopped without waiting through the retry schedule."""
    ref = await system.spawn(Recorder, [])
    await system.stop(ref)
    started = trio.current_time()
    with pytest.raises(AgentStopped):
        await ref.call("too late")
    assert trio.current_time() == started


# -- 5. at-least-once casts raise during shutdown ---------------------------------------------


async def test_at_least_once_cast_never_raises_mailbox_full_even_while_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AgentRef.cast: "Under a retrying guarantee ... this raises only for bad arguments".
    A handler still running while the system shuts down casts to a full rejecting mailbox:
    the cast must become a dead letter, not raise MailboxFull into the handler."""
    raised: list[BaseException] = []
    async with open_message_system(config()) as system:
        full = await system.spawn(
            Runner, mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT)
        )
        await full.cast(hold_forever)  # busy ...
        await trio.testing.wait_all_tasks_blocked()
        await full.cast(lambda ctx: None)  # ... and its one slot taken

        async def late_sender(ctx: Context) -> None:
            await trio.sleep(1)  # the system starts closing meanwhile
            try:
                full.cast_nowait("late")
            except Exception as error:
                raised.append(error)

        sender = await system.spawn(Runner, shutdown=5.0)
        await sender.cast(late_sender)
        await trio.testing.wait_all_tasks_blocked()
    assert raised == []


# -- 6. a custom router that raises on a retry takes the whole system down -----------------


class Flaky:
    """A custom router that sends nowhere the first time, then raises (a bug of the user's)."""

    def __init__(self) -> None:
        self.asked = 0

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        self.asked += 1
        if self.asked > 1:
            raise LookupError("routing table is being rebuilt")
        return []


async def test_custom_router_raising_in_a_retry_does_not_crash_the_system(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The router's task runs user code (MessageRouter.route, a pool's key) for retries. An
    exception there must settle that one message (dead letter), not kill the router task and
    with it the whole system (every agent, the body of open_message_system)."""
    router = Flaky()
    async with open_message_system(config(router=router)) as system:
        ref = await system.spawn(Recorder, [])
        await system.send_message(cast(None, "x", recipient="somewhere"))
        await trio.sleep(1)  # the retry asks the router, which raises
        assert await ref.call("still alive?") == "still alive?"


# -- 7. exactly-once: pool members share one window, so fan-out copies are "duplicates" ----


async def test_exactly_once_copies_fanned_out_to_two_pool_members_both_get_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A custom router names two agents: "each gets its own copy (same message id)". Dedup is
    per recipient; two different members are two recipients. With the pool's shared window
    the second member's copy is suppressed as a duplicate and never handled."""
    table = Table()
    async with open_message_system(config(router=table)) as system:
        log: list[str] = []
        pool = await system.spawn_pool(Named, "m", log, size=2, name="p")
        table.routes["both"] = pool.members
        once = MessageOptions(guarantee=EXACTLY_ONCE)
        await system.send_message(cast(None, "x", recipient="both", options=once))
        await trio.sleep(1)
        assert len(log) == 2
        assert system.delivery.get_stats().duplicates_suppressed == 0


# -- 8. default config: retries of an open circuit are spent long before it half-opens ----


async def test_cast_to_an_open_circuit_with_default_config_reaches_the_agent_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue: an open circuit "schedules a retry"; the router owns "half-open probes". With the
    default config (reset_timeout=30 s, retries 0.1+0.2+0.4 s) every retry hits the open
    circuit and the cast is dead-lettered after 0.7 s; a retry of CIRCUIT_OPEN should wait
    for the circuit (at least until it half-opens) instead of burning its attempts."""
    healthy = False
    log: list[str] = []

    class Recovering(Agent):
        async def handle_cast(self, message: Any, ctx: Context) -> None:
            if not healthy:
                raise Boom(message)
            log.append(message)

    async with open_message_system(MessageSystemConfig(max_restarts=100)) as system:
        ref = await system.spawn(Recovering)
        for i in range(5):
            await ref.cast(f"crash {i}", options=MessageOptions(max_retries=0))
            await trio.sleep(0.01)
        assert system.router.stats().open_circuits == 1
        healthy = True
        await ref.cast("after the outage")
        await trio.sleep(60)
        assert log == ["after the outage"]


# -- 9. a call's own timeout is cut short by the message's default 30 s expiry -------------


async def test_call_with_a_60_s_timeout_is_not_expired_after_30_s(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """`ref.call(msg, timeout=60)`: the caller waits up to 60 s. The call queued behind a
    40 s handler must be answered; instead the default MessageOptions.timeout (30 s) expires
    it and the caller gets DeliveryFailed after 40 s, with 20 s of its own timeout left."""
    ref = await system.spawn(Runner)
    await ref.cast(busy_for(40))
    assert await ref.call(lambda ctx: "done", timeout=60) == "done"


# -- 10. exactly-once: a call whose caller timed out remembers no reply --------------------


async def test_exactly_once_retry_of_a_timed_out_call_gets_the_reply(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
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
    again.id = first.id
    await system.send_message(again)
    assert await again_reply == "charged"
    assert len(runs) == 1


# -- 11. a dead letter's envelope, sent again, has no retries left -------------------------


async def test_resending_a_dead_lettered_envelope_gets_a_fresh_retry_budget(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Dead letters "keep the envelope" so that it can be inspected or sent again. The delivery
    layer counts attempts inside the envelope and never resets them, so sending it again
    (max_retries=3) dead-letters it on its first failure, with no retry at all."""
    await system.send_message(cast(None, "x", recipient="later"))
    await trio.sleep(5)
    [letter] = system.dead_letters
    assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
    before = system.delivery.get_stats().retried
    await system.send_message(letter.envelope)
    assert system.delivery.get_stats().retried == before + 1  # its first retry is scheduled


# -- 12. a call answered, then crashing, is counted as a failed call ------------------------


async def test_call_answered_before_its_handler_crashed_is_not_counted_failed(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """DeliveryStats.failed: "Calls that ended in an error for their waiting caller". A
    handler that answers through ctx.caller and then raises gave its caller the reply."""

    def answer_then_crash(ctx: Context) -> None:
        assert ctx.caller is not None
        ctx.caller.reply("ok")
        raise Boom("after replying")

    ref = await system.spawn(Runner)
    assert await ref.call(answer_then_crash) == "ok"
    await trio.testing.wait_all_tasks_blocked()
    assert system.delivery.get_stats().failed == 0


# -- 4b. queued messages of an agent stopped for good are retried into the void -------------


async def test_casts_queued_at_a_final_stop_are_agent_stopped_dead_letters(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """system.stop: a stopped agent's id is never taken again by a plain spawn, so retrying its
    queued casts (AGENT_STOPPED is in _RETRIED) only burns max_retries against NOT_FOUND and
    files them as RETRIES_EXHAUSTED 0.7 s later; the reason a user looks for (and gets at most
    once) is AGENT_STOPPED."""
    release = trio.Event()
    ref = await system.spawn(Runner)
    await ref.cast(lambda ctx: release.wait())
    await trio.testing.wait_all_tasks_blocked()
    await ref.cast(lambda ctx: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(system.stop, ref)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    await trio.sleep(5)
    assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.AGENT_STOPPED]


# -- 13. pool: a member waiting out its restart backoff still takes messages ---------------


async def test_least_loaded_pool_does_not_queue_behind_a_member_waiting_to_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A crashed member whose supervisor waits 10 s before restarting it has an empty mailbox,
    so LEAST_LOADED picks it first, and the message waits 10 s while a healthy member idles."""
    from supervisor import RestartBackoff

    cfg = MessageSystemConfig(
        max_restarts=100, restart_backoff=RestartBackoff(initial=10.0, jitter=0.0)
    )
    async with open_message_system(cfg) as system:
        log: list[str] = []
        pool = await system.spawn_pool(
            Named, "m", log, size=2, name="p", strategy=LoadBalancing.LEAST_LOADED
        )
        first = pool.members[0]
        with pytest.raises(Exception):  # noqa: B017,PT011 - CallFailed: member 0 restarts in 10 s
            await first.call("fail")
        started = trio.current_time()
        assert await pool.call("work", timeout=30) == "m"
        assert trio.current_time() - started < 1


# -- 14. pool: a member calling its own pool may be told it called itself ------------------


async def test_member_calling_its_pool_is_served_by_another_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pool spreads calls over its members; when a member calls the pool and the balancer
    picks that very member, the call fails with CallToSelf although the other member is
    free. The balancer should skip the caller."""
    async with open_message_system() as system:
        pool = await system.spawn_pool(
            Runner, size=2, name="p", strategy=LoadBalancing.RANDOM, seed=1
        )

        async def ask_the_pool(ctx: Context) -> Any:
            return await pool.call(lambda ctx: "inner")

        for _ in range(10):
            assert await pool.call(ask_the_pool) == "inner"


# -- 15. system notifications expire like user messages ----------------------------------------


async def test_down_reaches_a_monitor_that_was_busy_for_longer_than_30_s(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A monitor's Down (and a timer's message) is a system notification: Erlang never drops
    it. Notices get the default MessageOptions.timeout of 30 s, so a watcher busy for 40 s
    never sees the Down: it becomes an EXPIRED dead letter."""
    inbox: list[Any] = []
    watcher = await system.spawn(Runner, inbox)
    target = await system.spawn(Recorder, [])
    await watcher.call(lambda ctx: ctx.monitor(target))
    await watcher.cast(busy_for(40))
    await trio.testing.wait_all_tasks_blocked()
    await system.stop(target)
    await trio.sleep(60)
    assert [type(message) for message in inbox] == [Down]
