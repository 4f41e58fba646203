"""Hibernation: an agent idle past its ``hibernate_after`` gives up its task and keeps its
state; a message (or a timer) wakes the same instance, through its supervisor."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from agents import Boom, Recorder, Runner, lenient_config, run_action

from supervisor import RestartStrategy
from terraphim_actors import (
    Agent,
    AgentExited,
    Context,
    DeferredReply,
    DeliveryGuarantee,
    Down,
    ExitReason,
    MessageOptions,
    MessageSystem,
    Priority,
    StopReason,
    SystemShutdown,
    cast,
    open_message_system,
)
from terraphim_actors.errors import CallFailed, InvalidConfig

Clock = trio.testing.MockClock


class Sleeper(Agent):
    """Counts what it handles and logs its life; a call runs the action it carries."""

    hibernate_after = 10.0

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.held: DeferredReply | None = None

    async def on_start(self) -> None:
        self.handled = 0
        self.log.append("start")

    async def on_hibernate(self) -> None:
        self.log.append("hibernate")

    async def on_wake(self) -> None:
        self.log.append("wake")

    async def on_stop(self, reason: ExitReason) -> None:
        self.log.append(("stop", reason))

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message == "boom":
            raise Boom(message)
        self.handled += 1
        self.log.append(("cast", message))

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if callable(message):
            return await run_action(message, ctx)
        self.log.append(("call", message))
        return self.handled

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.log.append(("info", message))


class LightSleeper(Sleeper):
    """A sleeper with no ``on_stop``: stopped asleep without a task."""

    on_stop = Agent.on_stop  # type: ignore[assignment]


class KeepsItsContext(Agent):
    """Keeps the context ``on_start`` is given; a call says whether it is the handlers'."""

    hibernate_after = 10.0

    async def on_start(self, ctx: Context) -> None:
        self.kept = ctx

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return ctx is self.kept


def hibernated(system: MessageSystem) -> int:
    return system.get_stats()[0].agents_hibernated


def running(system: MessageSystem) -> int:
    return system.get_stats()[0].agents_running


def balanced(system: MessageSystem) -> bool:
    books = system.delivery.get_stats()
    return books.sent == (
        books.acknowledged
        + books.duplicates_suppressed
        + books.failed
        + books.dead_lettered
        + books.forwarded
        + books.pending
    )


class TestFallingAsleep:
    async def test_an_idle_agent_hibernates_after_its_time(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Idle for ``hibernate_after``, it sleeps: counted apart from the running agents."""
        log: list[Any] = []
        await system.spawn(Sleeper, log)
        await trio.sleep(9.9)
        assert (running(system), hibernated(system)) == (1, 0)
        await trio.sleep(0.2)
        assert (running(system), hibernated(system)) == (0, 1)
        assert log == ["start", "hibernate"]

    async def test_an_agent_without_hibernate_after_never_sleeps(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        await system.spawn(Recorder, [])
        await trio.sleep(10_000)
        assert (running(system), hibernated(system)) == (1, 0)

    async def test_the_spawn_argument_wins_over_the_class_attribute(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        await system.spawn(Sleeper, [], hibernate_after=1.0)
        await trio.sleep(1.1)
        assert hibernated(system) == 1

    async def test_math_inf_switches_off_the_class_attribute(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """``hibernate_after=math.inf`` never hibernates, whatever the class says (``None``
        means the class's own)."""
        await system.spawn(Sleeper, [], hibernate_after=math.inf)
        await trio.sleep(3600.0)  # 360 times the class's 10 s
        assert (running(system), hibernated(system)) == (1, 0)

    @pytest.mark.parametrize("value", [0, -1.0, math.nan, -math.inf, "10", True])
    async def test_a_bad_hibernate_after_is_invalid_config(
        self, system: MessageSystem, value: Any
    ) -> None:
        with pytest.raises(InvalidConfig, match="hibernate_after"):
            await system.spawn(Sleeper, [], hibernate_after=value)
        with pytest.raises(InvalidConfig, match="hibernate_after"):
            system.agent_spec(Sleeper, [], hibernate_after=value)
        assert system.agents == []

    async def test_a_bad_class_attribute_is_invalid_config(self, system: MessageSystem) -> None:
        class Insomniac(Sleeper):
            hibernate_after = 0.0

        with pytest.raises(InvalidConfig, match=r"Insomniac\.hibernate_after"):
            await system.spawn(Insomniac, [])

    async def test_a_sleeper_s_inbox_is_its_cell_which_stands_for_its_mailbox(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Falling asleep makes no inbox: the cell stands in its endpoint, with its mailbox's
        length and room, and stays true though its mailbox is empty; a message wakes it and
        puts the mailbox back."""
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await trio.sleep(11.0)
        cell = ref._agent()
        inbox = cell.endpoint.inbox
        assert inbox is cell
        assert (len(inbox), inbox.has_room(), bool(inbox)) == (0, True, True)
        ref.cast_nowait("a")
        assert await ref.call("count") == 1
        assert cell.endpoint.inbox is cell.mailbox
        assert log == ["start", "hibernate", "wake", ("cast", "a"), ("call", "count")]

    async def test_a_background_task_of_its_own_keeps_it_awake(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        ref = await system.spawn(Sleeper, [])
        await ref.call(lambda ctx: ctx.start_soon(trio.sleep, 50.0))
        await trio.sleep(45.0)
        assert hibernated(system) == 0
        await trio.sleep(20.0)  # the task ended at 50 s; idle 10 s more
        assert hibernated(system) == 1

    async def test_a_message_during_on_hibernate_keeps_it_awake(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """What arrives while ``on_hibernate`` runs is handled: ``on_wake`` follows at once."""
        log: list[Any] = []

        class Slow(Sleeper):
            async def on_hibernate(self) -> None:
                self.log.append("hibernate")
                await trio.sleep(1.0)

        ref = await system.spawn(Slow, log)
        await trio.sleep(10.5)
        await ref.cast("meanwhile")
        await trio.sleep(1.0)
        assert log == ["start", "hibernate", "wake", ("cast", "meanwhile")]
        assert hibernated(system) == 0


class TestWaking:
    async def test_a_cast_wakes_the_same_instance(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Its state goes on, with no second ``on_start``: ``on_wake`` comes first."""
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await ref.cast("a")
        await trio.sleep(11.0)
        await ref.cast("b")
        assert await ref.call("count") == 2
        assert log == [
            "start",
            ("cast", "a"),
            "hibernate",
            "wake",
            ("cast", "b"),
            ("call", "count"),
        ]
        assert (running(system), hibernated(system)) == (1, 0)

    async def test_messages_to_a_sleeper_keep_their_order(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await trio.sleep(11.0)
        for n in range(5):
            ref.cast_nowait(n)
        assert await ref.call("count") == 5
        assert log[3:] == [("cast", n) for n in range(5)] + [("call", "count")]

    async def test_an_agent_that_keeps_its_context_has_the_same_one_after_a_sleep(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """A sleeper lets go of its context only if nothing else holds it: the context an
        agent kept from ``on_start`` is the one its handlers get after waking."""
        ref = await system.spawn(KeepsItsContext)
        await trio.sleep(11.0)
        assert hibernated(system) == 1
        assert await ref.call("same context?") is True

    async def test_a_woken_agent_s_context_serves_the_message_in_hand(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """An agent that kept no context gets one after waking that knows the message in
        hand and the agent's own ref."""
        ref = await system.spawn(Sleeper, [])
        await ref.cast("before")
        await trio.sleep(11.0)
        assert hibernated(system) == 1

        async def describe(ctx: Context) -> Any:
            return ctx.self == ref, ctx.envelope.payload is describe

        assert await ref.call(describe) == (True, True)

    async def test_a_sleeper_s_last_activity_is_its_last_message(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Falling asleep is not activity: the mailbox's ``last_activity`` stays the time its
        last message was handled."""
        ref = await system.spawn(Sleeper, [])
        await ref.call("count")
        handled_at = trio.current_time()
        await trio.sleep(11.0)
        assert hibernated(system) == 1
        [stats] = [mailbox for mailbox in system.get_stats()[1] if mailbox.agent_id == ref.id]
        assert stats.last_activity == handled_at

    async def test_a_sleeper_that_had_messages_takes_new_ones_by_priority(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Its mailbox gives up its emptied lanes while it sleeps; the messages that wake
        it are still taken by priority, in order within one."""
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await ref.cast("before", priority=Priority.HIGH)
        await trio.sleep(11.0)
        for message, priority in [
            ("low", Priority.LOW),
            ("high-1", Priority.HIGH),
            ("normal", Priority.NORMAL),
            ("high-2", Priority.HIGH),
        ]:
            ref.cast_nowait(message, priority=priority)
        await trio.sleep(1.0)
        assert log[log.index("wake") + 1 :] == [
            ("cast", "high-1"),
            ("cast", "high-2"),
            ("cast", "normal"),
            ("cast", "low"),
        ]

    async def test_it_sleeps_again_after_its_time(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await trio.sleep(11.0)
        await ref.call("count")
        await trio.sleep(11.0)
        assert log == ["start", "hibernate", "wake", ("call", "count"), "hibernate"]
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_timer_due_while_it_sleeps_wakes_it(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """A pending timer does not keep it awake; when it fires, it wakes the agent."""
        log: list[Any] = []
        ref = await system.spawn(Sleeper, log)
        await ref.call(lambda ctx: ctx.send_after(100.0, "tick"))
        await trio.sleep(11.0)
        assert hibernated(system) == 1
        await trio.sleep(90.0)
        assert log == ["start", "hibernate", "wake", ("info", "tick")]

    async def test_a_deferred_reply_is_answered_after_a_sleep(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """A deferred call does not keep the agent awake; woken, it answers the caller."""
        ref = await system.spawn(Sleeper, [])

        def defer(ctx: Context) -> None:
            agent = ctx._server.agent  # type: ignore[union-attr]
            agent.held = ctx.defer()

        async def answer(ctx: Context) -> None:
            agent = ctx._server.agent  # type: ignore[union-attr]
            await agent.held.reply("late")

        answers: list[Any] = []

        async def caller() -> None:
            answers.append(await ref.call(defer, timeout=100.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.sleep(11.0)
            assert hibernated(system) == 1
            await ref.call(answer)
        assert answers == ["late"]

    async def test_a_pool_s_members_sleep_and_one_wakes_for_a_message(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        log: list[Any] = []
        pool = await system.spawn_pool(Sleeper, log, size=2)
        await trio.sleep(11.0)
        assert hibernated(system) == 2
        assert await pool.call("count") == 0
        assert (log.count("start"), log.count("wake")) == (2, 1)
        assert (running(system), hibernated(system)) == (1, 1)

    async def test_a_pool_spawned_with_hibernate_after_lets_its_members_sleep(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """``spawn_pool(..., hibernate_after=)`` gives each member the time, as ``spawn``'s
        does for one agent (here, of a class that never sleeps by itself)."""
        log: list[tuple[str, Any]] = []
        pool = await system.spawn_pool(Recorder, log, size=2, hibernate_after=5.0)
        await trio.sleep(4.0)
        assert hibernated(system) == 0
        await trio.sleep(2.0)
        assert hibernated(system) == 2
        await pool.cast("hello")
        await trio.testing.wait_all_tasks_blocked()
        assert log == [("cast", "hello")]
        assert (running(system), hibernated(system)) == (1, 1)

    async def test_a_bad_hibernate_after_of_a_pool_is_invalid_config(
        self, system: MessageSystem
    ) -> None:
        with pytest.raises(InvalidConfig, match="hibernate_after"):
            await system.spawn_pool(Recorder, [], size=2, hibernate_after=0.0)

    async def test_a_down_wakes_a_sleeping_watcher(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        log: list[Any] = []
        target = await system.spawn(Recorder, [])
        watcher = await system.spawn(Sleeper, log)
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await trio.sleep(11.0)
        await system.stop(target)
        await trio.sleep(0.1)
        assert log[-2:] == ["wake", ("info", Down(target, StopReason.NORMAL, monitor))]

    async def test_watchers_of_a_sleeper_hear_of_its_stop(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        inbox: list[Any] = []
        sleeper = await system.spawn(LightSleeper, [])
        watcher = await system.spawn(Runner, inbox)
        monitor = await watcher.call(lambda ctx: ctx.monitor(sleeper))
        await trio.sleep(11.0)
        await system.stop(sleeper)
        await trio.sleep(0.1)
        assert inbox == [Down(sleeper, StopReason.NORMAL, monitor)]


class TestStopping:
    @pytest.mark.parametrize("agent_class", [Sleeper, LightSleeper])
    async def test_stopping_a_sleeper_does_not_wake_it(
        self, system: MessageSystem, autojump_clock: Clock, agent_class: type[Sleeper]
    ) -> None:
        """``on_stop`` (if it has one) runs on the kept instance; ``on_wake`` does not."""
        log: list[Any] = []
        ref = await system.spawn(agent_class, log)
        await trio.sleep(11.0)
        await system.stop(ref)
        stop = [("stop", StopReason.NORMAL)] if agent_class is Sleeper else []
        assert log == ["start", "hibernate", *stop]
        assert system.agents == []
        assert system.whereis(ref.id) is None

    @pytest.mark.parametrize("agent_class", [Sleeper, LightSleeper])
    async def test_shutdown_does_not_wake_sleepers(
        self, autojump_clock: Clock, agent_class: type[Sleeper]
    ) -> None:
        log: list[Any] = []
        async with open_message_system() as system:
            await system.spawn(agent_class, log)
            await trio.sleep(11.0)
        stop = [("stop", StopReason.SHUTDOWN)] if agent_class is Sleeper else []
        assert log == ["start", "hibernate", *stop]

    @pytest.mark.parametrize("agent_class", [Sleeper, LightSleeper])
    async def test_a_sleeping_subscriber_stopped_gets_no_notice_of_its_own_exit(
        self, system: MessageSystem, autojump_clock: Clock, agent_class: type[Sleeper]
    ) -> None:
        """Its exit's notice goes to the other subscribers, not into its own closing mailbox
        as a dead letter."""
        log: list[Any] = []
        sleeper = await system.spawn(agent_class, log)
        system.subscribe(sleeper)
        await trio.sleep(11.0)
        assert hibernated(system) == 1
        await system.stop(sleeper)
        assert system.dead_letters == ()

    async def test_a_subscriber_stays_awake_through_the_shutdown_to_hear_every_exit(
        self, autojump_clock: Clock
    ) -> None:
        """A subscriber that would sleep while a busy agent holds the shutdown up does not:
        it hears of that agent's exit, as one that never sleeps does, and nothing sent to it
        (its own exit's notice included) ends as a dead letter."""
        log: list[Any] = []
        async with open_message_system() as system:
            watcher = await system.spawn(Sleeper, log, hibernate_after=0.5)
            system.subscribe(watcher)
            busy = await system.spawn(Runner, shutdown=3.0)

            async def hold_the_shutdown_up(ctx: Context) -> None:
                await trio.sleep(100.0)

            await busy.cast(hold_the_shutdown_up)
            await trio.testing.wait_all_tasks_blocked()
            log.clear()
        assert log == [
            ("info", SystemShutdown()),
            ("info", AgentExited(busy.id, StopReason.KILLED)),
            ("stop", StopReason.SHUTDOWN),
        ]
        assert [letter.envelope.recipient for letter in system.dead_letters] == [busy.id]

    async def test_shutdown_settles_a_call_a_sleeper_deferred(self, autojump_clock: Clock) -> None:
        """What the kept instance promised is settled as its end would: the caller hears."""
        outcomes: list[Any] = []
        async with open_message_system() as system:
            ref = await system.spawn(LightSleeper, [])

            def defer(ctx: Context) -> None:
                ctx._server.agent.held = ctx.defer()  # type: ignore[union-attr]

            async def caller() -> None:
                try:
                    await ref.call(defer, timeout=100.0)
                except Exception as error:
                    outcomes.append(type(error).__name__)

            system.nursery.start_soon(caller)
            await trio.sleep(11.0)
            assert hibernated(system) == 1
        assert outcomes == ["AgentStopped"]


class TestSupervision:
    async def test_a_woken_agent_that_crashes_restarts(self, autojump_clock: Clock) -> None:
        log: list[Any] = []
        async with open_message_system(lenient_config()) as system:
            ref = await system.spawn(Sleeper, log)
            await trio.sleep(11.0)
            await ref.cast("boom")
            await trio.sleep(0.1)
            assert log[:3] == ["start", "hibernate", "wake"]
            assert log.count("start") == 2
            assert system.get_stats()[0].agent_restarts == 1
            await trio.sleep(11.0)
            assert hibernated(system) == 1

    @pytest.mark.parametrize("agent_class", [Sleeper, LightSleeper])
    async def test_a_group_restart_restarts_a_sleeping_sibling_afresh(
        self, system: MessageSystem, autojump_clock: Clock, agent_class: type[Sleeper]
    ) -> None:
        log: list[Any] = []
        specs = [
            system.agent_spec(agent_class, log, name="sleeper"),
            system.agent_spec(Runner, name="crasher"),
        ]
        await system.start_supervisor(specs, strategy=RestartStrategy.ONE_FOR_ALL)
        await trio.sleep(11.0)
        assert hibernated(system) == 1

        def crash(ctx: Context) -> None:
            raise Boom("crash")

        with pytest.raises(CallFailed):
            await system.ref("crasher").call(crash)
        await trio.sleep(0.1)
        assert log.count("start") == 2
        assert "wake" not in log
        assert await system.ref("sleeper").call("count") == 0  # a fresh instance


@pytest.mark.parametrize("guarantee", list(DeliveryGuarantee))
class TestGuarantees:
    async def test_a_cast_to_a_sleeper_is_handled_once_and_settled(
        self, autojump_clock: Clock, guarantee: DeliveryGuarantee
    ) -> None:
        log: list[Any] = []
        async with open_message_system(lenient_config(guarantee=guarantee)) as system:
            ref = await system.spawn(Sleeper, log)
            await trio.sleep(11.0)
            await ref.cast("job")
            await trio.sleep(11.0)
            assert log == ["start", "hibernate", "wake", ("cast", "job"), "hibernate"]
            books = system.delivery.get_stats()
            assert (books.sent, books.acknowledged) == (1, 1)
            assert balanced(system)

    async def test_a_crash_after_waking_is_settled_by_the_guarantee(
        self, autojump_clock: Clock, guarantee: DeliveryGuarantee
    ) -> None:
        """Retried after the restart (at least once, exactly once) or a dead letter (at most
        once), exactly as for an agent that was awake."""
        log: list[Any] = []
        async with open_message_system(lenient_config(guarantee=guarantee)) as system:
            ref = await system.spawn(Sleeper, log)
            await trio.sleep(11.0)
            await ref.cast("boom")
            await trio.sleep(5.0)
            books = system.delivery.get_stats()
            if guarantee is DeliveryGuarantee.AT_MOST_ONCE:
                assert books.failed + books.dead_lettered == 1
            else:
                assert books.retried >= 1
            assert balanced(system)


class TestExactlyOnceWindow:
    async def test_an_exactly_once_resend_to_a_sleeper_is_suppressed(
        self, system: MessageSystem, autojump_clock: Clock
    ) -> None:
        """Its dedup window outlives the sleep: a resend of a handled message is not run."""
        log: list[Any] = []
        await system.spawn(Sleeper, log, name="ledger")
        once = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        envelope = cast(None, "pay", once, recipient="ledger")
        await system.send_message(envelope)
        await trio.sleep(11.0)
        await system.send_message(envelope)
        await trio.sleep(1.0)
        assert log == ["start", ("cast", "pay"), "hibernate", "wake"]
        assert system.delivery.get_stats().duplicates_suppressed == 1
        assert balanced(system)
