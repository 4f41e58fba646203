"""Pools: several instances of one agent behind one ``PoolRef``, balanced by a strategy."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from agents import Action, Boom, Named, Recorder, Runner, lenient_config, run_action, until

from supervisor import RestartBackoff
from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    CircuitState,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    Directive,
    ExitReason,
    LoadBalancing,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    PoolRef,
    RouterConfig,
    StopReason,
    cast,
    open_message_system,
)
from terraphim_actors.errors import (
    AgentStopped,
    CallFailed,
    CallToSelf,
    CircuitOpen,
    DeliveryFailed,
    DuplicateAgent,
    InvalidConfig,
    MessagingError,
)

#: What the workers of a pool handled: ``(member name, payload)``, shared by all members.
Log = list[tuple[str | None, Any]]


class Worker(Agent):
    """A pool member: a callable payload runs as an action (see ``agents.Runner``); any other
    payload is logged under the member's name, and a call replies with that name."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if callable(message):
            return await run_action(message, ctx)
        self.log.append((ctx.self.name, message))
        return ctx.self.name

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if callable(message):
            await run_action(message, ctx)
        else:
            self.log.append((ctx.self.name, message))


def fail(ctx: Context) -> None:
    """An action whose handler crashes."""
    raise ValueError("boom")


class Quits(Worker):
    """A member that stops for good at its first error."""

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        return Directive.STOP


#: What ``on_stop`` saw: ``(agent name, reason, Trio time)``, shared by every agent.
Stops = list[tuple[str | None, ExitReason, float]]


class Busy(Agent):
    """Spends a minute on every cast, as an LLM worker in a model call; notes its ``on_stop``."""

    def __init__(self, stops: Stops) -> None:
        self.stops = stops

    async def on_start(self, ctx: Context) -> None:
        self.name = ctx.self.name

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await trio.sleep(60)

    async def on_stop(self, reason: ExitReason) -> None:
        self.stops.append((self.name, reason, trio.current_time()))


@contextlib.asynccontextmanager
async def breaker_system() -> AsyncIterator[MessageSystem]:
    """At most once, and one crash opens a circuit for ten seconds."""
    config = MessageSystemConfig(
        delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_MOST_ONCE),
        router=RouterConfig(
            circuit_breaker=CircuitBreakerConfig(failure_threshold=1, reset_timeout=10)
        ),
    )
    async with open_message_system(config) as system:
        yield system


async def workers(system: MessageSystem, log: Log, size: int = 3, **options: Any) -> PoolRef:
    """A pool of ``size`` workers named ``workers``."""
    return await system.spawn_pool(Worker, log, size=size, name="workers", **options)


async def answers(pool: PoolRef, count: int) -> list[str]:
    """The names of the members that answered ``count`` calls through the pool."""
    return [await pool.call("who") for _ in range(count)]


class TestSpawn:
    async def test_spawn_pool_returns_a_pool_ref(self, system: MessageSystem) -> None:
        """``spawn_pool`` gives one ``PoolRef`` carrying the pool's strategy."""
        pool = await workers(system, [], strategy=LoadBalancing.LEAST_LOADED)
        assert isinstance(pool, PoolRef)
        assert pool.strategy is LoadBalancing.LEAST_LOADED
        assert pool.alive

    async def test_members_are_named_after_the_pool(self, system: MessageSystem) -> None:
        """Members are named ``workers-0`` to ``workers-{size-1}``, in pool order."""
        pool = await workers(system, [], size=3)
        assert [member.name for member in pool.members] == ["workers-0", "workers-1", "workers-2"]

    async def test_members_are_running_agents(self, system: MessageSystem) -> None:
        """Each member is an agent of its own, reachable by its name."""
        pool = await workers(system, [], size=2)
        for member in pool.members:
            assert member.alive
            assert system.whereis(member.name or "") == member

    async def test_default_strategy_is_round_robin(self, system: MessageSystem) -> None:
        """Without a strategy, a pool takes turns."""
        pool = await workers(system, [])
        assert pool.strategy is LoadBalancing.ROUND_ROBIN

    async def test_router_counts_the_pool(self, system: MessageSystem) -> None:
        """The router's statistics count each running pool."""
        await workers(system, [])
        assert system.router.stats().pools == 1

    async def test_pool_name_taken_raises_duplicate_agent(self, system: MessageSystem) -> None:
        """A second pool with the same name is refused."""
        await workers(system, [])
        with pytest.raises(DuplicateAgent):
            await workers(system, [])


class TestBalancing:
    async def test_round_robin_calls_take_turns(self, system: MessageSystem) -> None:
        """Round robin answers from each member in turn."""
        pool = await workers(system, [], strategy=LoadBalancing.ROUND_ROBIN)
        assert await answers(pool, 6) == [
            "workers-0",
            "workers-1",
            "workers-2",
            "workers-0",
            "workers-1",
            "workers-2",
        ]

    async def test_round_robin_casts_spread_evenly(self, system: MessageSystem) -> None:
        """Nine casts through a round-robin pool of three give each member three."""
        log: Log = []
        pool = await workers(system, log, strategy=LoadBalancing.ROUND_ROBIN)
        for index in range(9):
            await pool.cast(index)
        await trio.testing.wait_all_tasks_blocked()
        counts = collections.Counter(name for name, _ in log)
        assert counts == {"workers-0": 3, "workers-1": 3, "workers-2": 3}

    async def test_random_pool_reaches_every_member(self, system: MessageSystem) -> None:
        """A seeded random pool spreads calls over all its members."""
        pool = await workers(system, [], strategy=LoadBalancing.RANDOM, seed=5)
        assert set(await answers(pool, 60)) == {"workers-0", "workers-1", "workers-2"}

    async def test_least_loaded_goes_to_the_idle_member(self, system: MessageSystem) -> None:
        """While one member is busy, calls go to the member with nothing to do."""
        release = trio.Event()
        pool = await workers(system, [], size=2, strategy=LoadBalancing.LEAST_LOADED)
        await pool.cast(until(release))
        await trio.testing.wait_all_tasks_blocked()
        assert await answers(pool, 3) == ["workers-1"] * 3
        release.set()

    async def test_least_loaded_avoids_a_long_mailbox(self, system: MessageSystem) -> None:
        """Casts queued behind a busy member are counted: new work goes to the others."""
        release = trio.Event()
        log: Log = []
        pool = await workers(system, log, size=3, strategy=LoadBalancing.LEAST_LOADED)
        busy = pool.members[0]
        await busy.cast(until(release))
        await trio.testing.wait_all_tasks_blocked()
        for index in range(4):
            await pool.cast(index)
        await trio.testing.wait_all_tasks_blocked()
        assert "workers-0" not in {name for name, _ in log}
        release.set()

    async def test_consistent_hash_sends_equal_keys_to_one_member(
        self, system: MessageSystem
    ) -> None:
        """With ``key=``, every message with the same key reaches the same member."""
        log: Log = []
        pool = await workers(
            system, log, strategy=LoadBalancing.CONSISTENT_HASH, key=lambda payload: payload[0]
        )
        for index in range(10):
            await pool.cast(("user-7", index))
        await trio.testing.wait_all_tasks_blocked()
        assert len({name for name, _ in log}) == 1
        assert [payload for _, payload in log] == [("user-7", index) for index in range(10)]

    async def test_consistent_hash_spreads_different_keys(self, system: MessageSystem) -> None:
        """Many different keys reach every member."""
        pool = await workers(system, [], strategy=LoadBalancing.CONSISTENT_HASH)
        names = {await pool.call(("user", index)) for index in range(60)}
        assert names == {"workers-0", "workers-1", "workers-2"}

    async def test_members_share_one_exactly_once_window(self, system: MessageSystem) -> None:
        """Exactly once, a message sent again through the pool is not handled again."""
        log: Log = []
        await workers(system, log, size=2, strategy=LoadBalancing.ROUND_ROBIN)
        options = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        envelope = cast(None, "once", options, recipient="workers")
        await system.send_message(envelope)
        await trio.testing.wait_all_tasks_blocked()
        await system.send_message(envelope)
        await trio.testing.wait_all_tasks_blocked()
        assert [payload for _member, payload in log] == ["once"]
        assert system.delivery.get_stats().duplicates_suppressed == 1

    async def test_broadcast_reaches_every_member(self, system: MessageSystem) -> None:
        """``broadcast`` casts the payload to each member once."""
        log: Log = []
        pool = await workers(system, log)
        await pool.broadcast("hello")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == [
            ("workers-0", "hello"),
            ("workers-1", "hello"),
            ("workers-2", "hello"),
        ]

    async def test_broadcast_reaches_the_others_when_one_member_refuses(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At most once, the first member's open circuit refuses the broadcast: the other
        members still get it, then that refusal is raised, naming the member."""
        log: Log = []
        async with breaker_system() as system:
            pool = await workers(system, log)
            refusing = pool.members[0]
            with pytest.raises(CallFailed):
                await refusing.call(fail)
            with pytest.raises(CircuitOpen) as refused:
                await pool.broadcast("hello")
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == [("workers-1", "hello"), ("workers-2", "hello")]
        assert repr(refusing) in " ".join(refused.value.__notes__)

    @pytest.mark.parametrize("kind", ["cast", "info", "call"])
    async def test_a_send_cancelled_before_it_went_moves_nothing_on(
        self, system: MessageSystem, kind: str
    ) -> None:
        """A send through the pool that raises ``Cancelled`` at its cancellation point has not
        been routed: the count stays, and round robin still starts with the first member."""
        log: Log = []
        pool = await workers(system, log)
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await getattr(pool, kind)("never")
        assert system.router.stats().routed == 0
        assert await pool.call("who") == "workers-0"

    async def test_send_message_to_the_pool_name_is_balanced(self, system: MessageSystem) -> None:
        """``system.send_message`` addressed to the pool's name goes through its balancer."""
        log: Log = []
        await workers(system, log, strategy=LoadBalancing.ROUND_ROBIN)
        for index in range(3):
            await system.send_message(cast(None, index, recipient="workers"))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == [("workers-0", 0), ("workers-1", 1), ("workers-2", 2)]


class TestFailures:
    async def test_crashed_member_is_restarted(self, system: MessageSystem) -> None:
        """A member whose handler crashed is started again, under the same ref and name."""
        pool = await workers(system, [])
        member = pool.members[1]
        with pytest.raises(CallFailed):
            await member.call(fail)
        await trio.testing.wait_all_tasks_blocked()
        assert member.alive
        assert pool.members[1] == member
        assert await member.call("who") == "workers-1"
        assert system.get_stats()[0].agent_restarts == 1

    async def test_member_whose_on_error_says_stop_stops_for_good(
        self, system: MessageSystem
    ) -> None:
        """A member whose ``on_error`` returns ``Directive.STOP`` is not restarted; the pool
        keeps routing to the others."""
        pool = await system.spawn_pool(Quits, [], size=3, name="workers")
        quitter = pool.members[0]
        with pytest.raises(CallFailed):
            await pool.call(fail)  # round robin: the first member
        await trio.testing.wait_all_tasks_blocked()
        assert not quitter.alive
        assert [member.name for member in pool.members] == ["workers-1", "workers-2"]
        assert sorted(set(await answers(pool, 4))) == ["workers-1", "workers-2"]
        assert system.get_stats()[0].agent_restarts == 0

    async def test_pool_keeps_serving_after_a_member_crashed(self, system: MessageSystem) -> None:
        """After a crash through the pool, every member still answers through it."""
        pool = await workers(system, [], strategy=LoadBalancing.ROUND_ROBIN)
        with pytest.raises(CallFailed):
            await pool.call(fail)
        assert sorted(await answers(pool, 3)) == ["workers-0", "workers-1", "workers-2"]

    async def test_failed_cast_is_retried_on_another_member(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once, a cast that crashed a member is retried through the pool."""
        handled: list[str | None] = []

        def fail_on_first_member(ctx: Context) -> None:
            if ctx.self.name == "workers-0":
                raise ValueError("boom")
            handled.append(ctx.self.name)

        pool = await workers(system, [], size=2, strategy=LoadBalancing.ROUND_ROBIN)
        await pool.cast(fail_on_first_member)
        await trio.sleep(5)
        assert handled == ["workers-1"]

    async def test_member_with_open_circuit_is_skipped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """While a member's circuit is open, the pool sends nothing to it."""
        async with breaker_system() as system:
            pool = await workers(system, [], strategy=LoadBalancing.ROUND_ROBIN)
            failing = pool.members[1]
            with pytest.raises(CallFailed):
                await failing.call(fail)
            assert system.router.stats().circuits[failing.id] is CircuitState.OPEN
            assert set(await answers(pool, 6)) == {"workers-0", "workers-2"}

    async def test_pool_with_every_circuit_open_refuses_with_circuit_open(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At most once, a cast to a pool whose members all have open circuits raises
        ``CircuitOpen`` and is a ``CIRCUIT_OPEN`` dead letter, as for a single agent."""
        async with breaker_system() as system:
            pool = await workers(system, [], size=2)
            for member in pool.members:
                with pytest.raises(CallFailed):
                    await member.call(fail)
            with pytest.raises(CircuitOpen):
                await pool.cast("refused")
            assert system.dead_letters[-1].reason is DeadLetterReason.CIRCUIT_OPEN

    async def test_member_back_once_its_circuit_half_opens(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After the reset timeout the skipped member takes messages again."""
        async with breaker_system() as system:
            pool = await workers(system, [], strategy=LoadBalancing.ROUND_ROBIN)
            with pytest.raises(CallFailed):
                await pool.members[1].call(fail)
            await trio.sleep(10)
            assert "workers-1" in await answers(pool, 3)

    async def test_least_loaded_skips_an_open_circuit(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The idlest member is passed over while its circuit is open."""
        async with breaker_system() as system:
            pool = await workers(system, [], size=2, strategy=LoadBalancing.LEAST_LOADED)
            with pytest.raises(CallFailed):
                await pool.members[0].call(fail)
            assert await answers(pool, 3) == ["workers-1"] * 3


def calling(pool: PoolRef) -> Action:
    """An action that calls ``pool`` from the handler of a member, and returns the reply or
    the error the call raised."""

    async def call_the_pool(ctx: Context) -> Any:
        try:
            return await pool.call("who", timeout=10.0)
        except MessagingError as error:
            return error

    return call_the_pool


class TestCallsFromAMember:
    async def test_member_calling_its_own_pool_is_answered_by_another_member(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A member's call through its own pool goes to another member, never to itself."""
        pool = await workers(system, [], size=2)
        assert await pool.members[0].call(calling(pool)) == "workers-1"

    async def test_member_calling_its_own_one_member_pool_gets_call_to_self_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The only member calling its pool would wait for itself: ``CallToSelf`` at once, not
        ``DeliveryFailed`` after its retries, and nothing is counted as sent."""
        pool = await workers(system, [], size=1)
        started = trio.current_time()
        sent = system.delivery.get_stats().sent
        assert isinstance(await pool.call(calling(pool)), CallToSelf)
        assert trio.current_time() == started
        assert system.delivery.get_stats().sent == sent + 1  # the outer call only

    async def test_member_calling_its_pool_whose_other_members_stopped_gets_call_to_self(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once every other member has stopped for good, the member left is the only one that
        could answer its own call: ``CallToSelf`` at once."""
        pool = await workers(system, [], size=2)
        await system.stop(pool.members[1])
        started = trio.current_time()
        assert isinstance(await pool.call(calling(pool)), CallToSelf)
        assert trio.current_time() == started

    async def test_member_calling_its_pool_while_the_other_member_restarts_gets_its_answer(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A member waiting to restart (here 2 s of restart backoff) still counts: the call
        waits in its mailbox and is answered once it is back."""
        config = MessageSystemConfig(restart_backoff=RestartBackoff(initial=2.0, jitter=0.0))
        async with open_message_system(config) as system:
            pool = await workers(system, [], size=2)
            with pytest.raises(CallFailed):
                await pool.members[1].call(fail)
            started = trio.current_time()
            assert await pool.members[0].call(calling(pool)) == "workers-1"
            assert trio.current_time() == started + 2.0

    async def test_background_task_of_a_member_may_call_its_one_member_pool(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A member's background task is not the member's handler, which is free to answer
        it, as for a call to its own ref."""
        replies: list[Any] = []

        async def call_from_background(ctx: Context) -> None:
            replies.append(await calling(pool)(ctx))

        pool = await workers(system, [], size=1)
        await pool.call(lambda ctx: ctx.start_soon(call_from_background, ctx))
        await trio.testing.wait_all_tasks_blocked()
        assert replies == ["workers-0"]


class TestRegistry:
    async def test_whereis_pool_name_is_the_pool_ref(self, system: MessageSystem) -> None:
        """``whereis`` by the pool's name gives its ``PoolRef``."""
        pool = await workers(system, [])
        found = system.whereis("workers")
        assert isinstance(found, PoolRef)
        assert found == pool
        assert [member.name for member in found.members] == [m.name for m in pool.members]

    async def test_stop_pool_stops_every_member(self, system: MessageSystem) -> None:
        """``system.stop(pool)`` stops each member for good, and the pool with them."""
        pool = await workers(system, [])
        members = pool.members
        await system.stop(pool)
        assert not pool.alive
        assert [member.alive for member in members] == [False, False, False]
        assert pool.members == []
        assert system.router.stats().pools == 0

    async def test_stop_pool_frees_its_names(self, system: MessageSystem) -> None:
        """After the stop, neither the pool's name nor its members' names answer."""
        pool = await workers(system, [])
        await system.stop(pool)
        assert system.whereis("workers") is None
        assert system.whereis("workers-0") is None

    async def test_stopped_pool_name_can_be_reused(self, system: MessageSystem) -> None:
        """A new pool can take the name of a stopped one, with the same member names."""
        await system.stop(await workers(system, []))
        log: Log = []
        again = await workers(system, log, size=2)
        assert await answers(again, 2) == ["workers-0", "workers-1"]
        assert system.whereis("workers") == again

    @pytest.mark.parametrize("size", [0, -1, 1.5, True, "3"])
    async def test_bad_size_raises_invalid_config(
        self, system: MessageSystem, size: object
    ) -> None:
        """A size that is not an int of at least 1 is refused, and no name is taken."""
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(Worker, [], size=size, name="workers")  # type: ignore[arg-type]
        assert system.whereis("workers") is None
        assert system.whereis("workers-0") is None

    @pytest.mark.parametrize("strategy", ["round-robin", "fastest", None, 0])
    async def test_unknown_strategy_raises_invalid_config(
        self, system: MessageSystem, strategy: object
    ) -> None:
        """A strategy that is not a ``LoadBalancing`` is refused, and no name is taken."""
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(Worker, [], size=2, name="workers", strategy=strategy)  # type: ignore[arg-type]
        assert system.whereis("workers") is None

    async def test_non_callable_key_raises_invalid_config(self, system: MessageSystem) -> None:
        """A ``key`` that is not a function of the payload is refused."""
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(
                Worker,
                [],
                size=2,
                name="workers",
                strategy=LoadBalancing.CONSISTENT_HASH,
                key="user",  # type: ignore[arg-type]
            )
        assert system.whereis("workers") is None

    async def test_monitoring_a_pool_raises_invalid_config(self, system: MessageSystem) -> None:
        """``ctx.monitor`` of a pool ref is refused: monitors watch one agent."""
        pool = await workers(system, [])

        def try_monitor(ctx: Context) -> Exception | None:
            try:
                ctx.monitor(pool)
            except InvalidConfig as error:
                return error
            return None

        watcher = await system.spawn(Runner)
        assert isinstance(await watcher.call(try_monitor), InvalidConfig)


class TestShutdown:
    async def test_busy_members_stop_together_at_shutdown(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Four members busy in long handlers are stopped at once, as OTP stops
        simple_one_for_one children: leaving the block takes one shutdown time, not four,
        and every member's ``on_stop`` runs."""
        stops: Stops = []
        async with open_message_system(MessageSystemConfig(shutdown_timeout=5.0)) as system:
            pool = await system.spawn_pool(Busy, stops, size=4, name="llm")
            for member in pool.members:
                await member.cast("prompt")
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
        assert trio.current_time() - began == pytest.approx(5.0)
        assert sorted(name for name, _, _ in stops) == ["llm-0", "llm-1", "llm-2", "llm-3"]

    async def test_stopping_a_busy_pool_takes_one_shutdown_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``system.stop(pool)`` also stops its busy members together."""
        stops: Stops = []
        async with open_message_system(MessageSystemConfig(shutdown_timeout=5.0)) as system:
            pool = await system.spawn_pool(Busy, stops, size=4, name="llm")
            for member in pool.members:
                await member.cast("prompt")
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
            await system.stop(pool)
            assert trio.current_time() - began == pytest.approx(5.0)
            assert len(stops) == 4

    async def test_a_pool_stops_in_its_place_among_the_roots_agents(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Agents spawned after a pool stop before its members, those spawned before it after
        them: the root keeps newest-first order around the pool."""
        stops: Stops = []
        async with open_message_system() as system:
            await system.spawn(Busy, stops, name="older")
            await system.spawn_pool(Busy, stops, size=2, name="llm")
            await system.spawn(Busy, stops, name="newer")
        names = [name for name, _, _ in stops]
        assert names[0] == "newer"
        assert sorted(names[1:3]) == ["llm-0", "llm-1"]
        assert names[3] == "older"
        assert {reason for _, reason, _ in stops} == {StopReason.SHUTDOWN}

    async def test_each_busy_member_is_named_as_holding_the_shutdown_up(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Stopping together, every busy member is named after one second, each once."""
        with caplog.at_level(logging.INFO, logger="terraphim_actors"):
            async with open_message_system(MessageSystemConfig(shutdown_timeout=5.0)) as system:
                pool = await system.spawn_pool(Busy, [], size=4, name="llm")
                for member in pool.members:
                    await member.cast("prompt")
                await trio.testing.wait_all_tasks_blocked()
        held = [r.getMessage() for r in caplog.records if "held up" in r.getMessage()]
        assert sorted(message.split("'")[1] for message in held) == [f"llm-{n}" for n in range(4)]
        assert all(" for 1.0 s, " in message for message in held)
        assert all(message.endswith("it may take 4.0 s more") for message in held)

    async def test_the_shutdown_deadline_cuts_busy_members_short(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Past ``shutdown_deadline`` the members still busy are cancelled at once and their
        ``on_stop`` runs with ``KILLED``."""
        stops: Stops = []
        config = MessageSystemConfig(shutdown_timeout=5.0, shutdown_deadline=2.0)
        async with open_message_system(config) as system:
            pool = await system.spawn_pool(Busy, stops, size=4, name="llm")
            for member in pool.members:
                await member.cast("prompt")
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
        assert trio.current_time() - began <= 3.0
        assert [reason for _, reason, _ in stops] == [StopReason.KILLED] * 4


AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE


class TestMemberCallingItsOwnPool:
    async def test_member_calling_its_pool_is_served_by_another_member(
        self,
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

    async def test_member_calling_its_pool_whose_other_member_is_open_is_not_told_call_to_self(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """A pool skips the member that calls it (the test above). When every other member's circuit
        is open, the fallback ("name the one that lets a trial through first") picks among all
        members with a breaker, the caller included; a caller whose own breaker is closed (one old
        failure) has the smallest reopens_at, so the call fails with CallToSelf instead of the open
        circuit of the other member (DeliveryFailed / CircuitOpen)."""
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


class TestMemberCastingToItsOwnPool:
    async def test_member_of_a_one_member_pool_can_cast_to_its_pool(
        self,
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


class TestMemberStoppingItsOwnPool:
    def test_a_pool_member_stopping_its_own_pool_is_told_call_to_self(self) -> None:
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


class TestBalancingPassesOverMembersThatCannotTakeWork:
    async def test_pool_skips_a_half_open_member_that_admits_no_more_trials(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """Issue: "instances whose circuit is open are skipped". A half-open member whose one
        trial is in flight refuses like an open one, so the pool must pass it over while another
        member is healthy; the sender must never see CircuitOpen."""
        breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0)
        async with open_message_system(
            lenient_config(guarantee=AT_MOST_ONCE, breaker=breaker)
        ) as system:
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

    async def test_least_loaded_pool_does_not_queue_behind_a_member_waiting_to_restart(
        self,
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

    async def test_a_member_being_stopped_for_good_takes_no_more_of_the_pools_messages(
        self, system: MessageSystem
    ) -> None:
        """While ``system.stop`` waits for a busy member's handler, its mailbox is closed: the
        pool sends what comes to the other member instead of filing it as stopped."""
        log: Log = []
        pool = await workers(system, log, size=2)
        leaving, staying = pool.members
        release = trio.Event()
        await leaving.cast(until(release))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.stop, leaving)
            await trio.testing.wait_all_tasks_blocked()
            for number in range(4):
                await pool.cast(number)
            answer = await pool.call("who")
            await trio.testing.wait_all_tasks_blocked()
            assert pool.members == [staying]
            release.set()
        assert answer == staying.name
        assert [payload for _, payload in log] == [0, 1, 2, 3, "who"]
        assert list(system.dead_letters) == []

    async def test_an_exactly_once_resend_waits_for_its_member_being_stopped(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The member an exactly-once message's id picks is being stopped for good, its
        handler still running the first copy: a resend is not handed to another member,
        which would run it at the same time, but waits until the member is gone, and is
        then known as a duplicate."""
        handled: list[str | None] = []
        release = trio.Event()

        async def charge_the_card(ctx: Context) -> None:
            handled.append(ctx.self.name)
            await release.wait()

        pool = await workers(system, [], size=2)
        once = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        envelope = cast(None, charge_the_card, once, recipient=pool.id)
        await system.send_message(envelope)
        await trio.testing.wait_all_tasks_blocked()
        [first] = [member for member in pool.members if member.name == handled[0]]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.stop, first)
            await trio.testing.wait_all_tasks_blocked()
            await system.send_message(envelope)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        await trio.sleep(10)
        assert handled == [first.name]
        assert system.delivery.get_stats().duplicates_suppressed == 1

    async def test_pool_prefers_a_member_restarting_to_one_whose_circuit_is_open(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Member 0 runs with its circuit open; member 1 waits a second to restart, its circuit
        closed: the call waits for member 1 instead of being refused by member 0's circuit."""
        config = MessageSystemConfig(
            max_restarts=100,
            restart_backoff=RestartBackoff(initial=1.0, multiplier=1.0, jitter=0.0),
            delivery=DeliveryConfig(guarantee=AT_MOST_ONCE),
            router=RouterConfig(
                circuit_breaker=CircuitBreakerConfig(failure_threshold=2, reset_timeout=60.0)
            ),
        )
        async with open_message_system(config) as system:
            pool = await workers(system, [], size=2)
            open_member, restarting = pool.members
            for _ in range(2):
                with pytest.raises(CallFailed):
                    await open_member.call(fail)
                await trio.sleep(2)
            with pytest.raises(CallFailed):
                await restarting.call(fail)
            assert system.router.stats().open_circuits == 1
            assert await pool.call("who") == restarting.name


class TestPoolWithNoMemberLeft:
    async def test_a_call_fails_at_once_as_a_call_to_a_stopped_agent(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once every member has stopped for good, nothing will answer: the call gets
        ``AgentStopped`` at once, rather than retrying against "no agent registered"."""
        pool = await workers(system, [], size=2)
        for member in pool.members:
            await system.stop(member)
        started = trio.current_time()
        with pytest.raises(AgentStopped):
            await pool.call("who", timeout=2)
        assert trio.current_time() == started

    async def test_a_cast_is_an_agent_stopped_dead_letter_without_retries(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast to it spends no retries on a pool nothing will serve again."""
        pool = await workers(system, [], size=2)
        for member in pool.members:
            await system.stop(member)
        await pool.cast("lost")
        await trio.sleep(5)
        assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.AGENT_STOPPED]
        assert system.delivery.get_stats().retried == 0

    async def test_at_shutdown_it_refuses_as_a_stopped_agent_does(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent spawned before a pool sends to it from ``on_stop``, the pool having
        stopped first (newest first): refused as a send to an agent stopped before it is."""
        targets: dict[str, AgentRef | PoolRef] = {}
        outcomes: dict[str, str] = {}
        async with breaker_system() as system:
            await system.spawn(SendsAtStop, targets, outcomes)
            targets["agent"] = await system.spawn(Worker, [], name="alone")
            targets["pool"] = await workers(system, [], size=2)
        assert outcomes["pool cast"] == outcomes["agent cast"]
        assert outcomes["pool call"] == outcomes["agent call"] == "AgentStopped"


class SendsAtStop(Agent):
    """Casts and calls each of ``targets`` from its ``on_stop``, noting each outcome."""

    def __init__(self, targets: dict[str, AgentRef | PoolRef], outcomes: dict[str, str]) -> None:
        self.targets = targets
        self.outcomes = outcomes

    async def on_stop(self, reason: ExitReason) -> None:
        for label, target in self.targets.items():
            for kind in ("cast", "call"):
                try:
                    await getattr(target, kind)("bye")
                    self.outcomes[f"{label} {kind}"] = "ok"
                except Exception as error:
                    self.outcomes[f"{label} {kind}"] = type(error).__name__


class TestPoolStoppedForGood:
    async def test_cast_in_hand_when_its_pool_is_stopped_is_an_agent_stopped_dead_letter(
        self,
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
            assert [letter.reason for letter in system.dead_letters] == [
                DeadLetterReason.AGENT_STOPPED
            ]

    async def test_call_to_a_stopped_pool_raises_agent_stopped_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """README: "An agent that has stopped for good refuses at once ... a call raises
        AgentStopped" (as for a plain agent). A pool stopped with system.stop is treated as a
        missing recipient instead: the call is retried for 0.7 s and then fails with
        DeliveryFailed(AgentNotFound)."""
        pool = await system.spawn_pool(Recorder, [], size=2, name="p")
        await system.stop(pool)
        started = trio.current_time()
        with pytest.raises(AgentStopped):
            await pool.call("too late")
        assert trio.current_time() == started
