"""``FaultInjector``: seeded faults around agents and routes, each counted, none unaccounted."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageKind,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentNotFound, CallFailed, CallTimeout, InvalidConfig
from terraphim_actors.testing import (
    DROPPED_IN_TRANSIT,
    FaultInjector,
    FaultStats,
    InjectedFault,
    TestProbe,
)

AT_MOST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)


class Counter(Agent):
    """Appends every payload it handles (casts, calls, infos) to a shared list."""

    def __init__(self, handled: list[Any]) -> None:
        self.handled = handled

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.handled.append(message)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.handled.append(message)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        self.handled.append(message)
        return message


def routed_through(router: Any, **delivery: Any) -> MessageSystemConfig:
    """A system whose addressed messages go through ``router``, without jitter."""
    return MessageSystemConfig(
        delivery=DeliveryConfig(jitter=0.0, **delivery),
        router=RouterConfig(custom_router=router),
    )


class TestWrapAgent:
    async def test_the_nth_run_crashes_and_the_message_is_retried(
        self, message_system: MessageSystem, autojump_clock: Any
    ) -> None:
        """``crash_on={2}`` crashes the second run; at least once, that message runs again."""
        injector = FaultInjector()
        handled: list[Any] = []
        agent = await message_system.spawn(injector.wrap_agent(Counter, crash_on={2}), handled)
        for number in range(3):
            await agent.cast(number)
        await trio.sleep(5)
        assert sorted(handled) == [0, 1, 2]
        assert injector.stats().crashes == 1
        assert message_system.get_stats()[0].agent_restarts == 1

    async def test_a_crashed_call_raises_call_failed_caused_by_injected_fault(
        self, message_system: MessageSystem
    ) -> None:
        """The caller sees the injected crash as it would see a handler's bug."""
        injector = FaultInjector()
        agent = await message_system.spawn(
            injector.wrap_agent(Counter, crash_if=lambda message: message == "poison"), []
        )
        with pytest.raises(CallFailed) as raised:
            await agent.call("poison")
        assert isinstance(raised.value.__cause__, InjectedFault)
        assert await agent.call("fine") == "fine"

    async def test_a_crash_runs_before_the_real_handler(
        self, message_system: MessageSystem, autojump_clock: Any
    ) -> None:
        """A crashed run has no effect: the wrapped handler never saw it."""
        injector = FaultInjector()
        handled: list[Any] = []
        agent = await message_system.spawn(injector.wrap_agent(Counter, crash_on={1}), handled)
        await agent.cast("once", options=AT_MOST_ONCE)
        await trio.testing.wait_all_tasks_blocked()
        assert handled == []
        [letter] = message_system.dead_letters
        assert letter.reason is DeadLetterReason.HANDLER_CRASHED

    async def test_the_same_seed_crashes_the_same_runs(self, autojump_clock: Any) -> None:
        """A failing run repeats: the faults depend only on the seed (and the traffic)."""

        async def crashed_runs(seed: int) -> list[Any]:
            injector = FaultInjector(seed=seed)
            handled: list[Any] = []
            async with open_message_system(MessageSystemConfig(max_restarts=100)) as system:
                faulty = injector.wrap_agent(Counter, crash_probability=0.3)
                agent = await system.spawn(faulty, handled)
                for number in range(20):
                    await agent.cast(number, options=AT_MOST_ONCE)
                await trio.testing.wait_all_tasks_blocked()
                return [letter.envelope.payload for letter in system.dead_letters]

        first = await crashed_runs(seed=7)
        assert first  # 30 % of 20 runs: some crashed
        assert await crashed_runs(seed=7) == first
        assert await crashed_runs(seed=8) != first

    async def test_a_delay_holds_the_handler_for_that_long(
        self, message_system: MessageSystem, autojump_clock: Any
    ) -> None:
        """``delay`` seconds of Trio time pass before the real handler runs."""
        injector = FaultInjector()
        agent = await message_system.spawn(injector.wrap_agent(Counter, delay=2.5), [])
        started = trio.current_time()
        assert await agent.call("slow", timeout=10.0) == "slow"
        assert trio.current_time() - started == pytest.approx(2.5)
        assert injector.stats().delays == 1

    async def test_kinds_limits_the_faults_to_those_messages(
        self, message_system: MessageSystem
    ) -> None:
        """With ``kinds={CAST}``, calls pass untouched and are not counted."""
        injector = FaultInjector()
        faulty = injector.wrap_agent(Counter, crash_probability=1.0, kinds={MessageKind.CAST})
        agent = await message_system.spawn(faulty, [])
        assert await agent.call("untouched") == "untouched"
        assert injector.stats().handler_runs == 0

    async def test_runs_are_counted_per_agent(self, message_system: MessageSystem) -> None:
        """Two agents of one wrapped class each crash on their own first run."""
        injector = FaultInjector()
        faulty = injector.wrap_agent(Counter, crash_on={1})
        for _ in range(2):
            agent = await message_system.spawn(faulty, [])
            with pytest.raises(CallFailed):
                await agent.call("first")
            assert await agent.call("second") == "second"
        assert injector.stats().crashes == 2

    def test_the_wrapper_is_a_subclass_named_after_the_agent(self) -> None:
        """It stands wherever the agent class does."""
        faulty = FaultInjector().wrap_agent(Counter, crash_on={1})
        assert issubclass(faulty, Counter)
        assert faulty.__name__ == "FaultyCounter"

    @pytest.mark.parametrize(
        "options",
        [
            {"crash_probability": 1.5},
            {"crash_probability": -0.1},
            {"crash_probability": True},
            {"delay_probability": float("nan")},
            {"delay": -1.0},
            {"crash_on": [0]},
            {"crash_on": ["3"]},
            {"crash_if": "poison"},
            {"kinds": ["cast"]},
            {"crash_on": 3},
            {"crash_on": None},
            {"kinds": None},
            {"kinds": 0.5},
        ],
        ids=repr,
    )
    def test_bad_options_raise_invalid_config(self, options: dict[str, Any]) -> None:
        """Probabilities are from 0 to 1, runs count from 1, delays are seconds."""
        with pytest.raises(InvalidConfig):
            FaultInjector().wrap_agent(Counter, **options)

    def test_only_agent_classes_can_be_wrapped(self) -> None:
        """Wrapping something else is a configuration error."""
        with pytest.raises(InvalidConfig):
            FaultInjector().wrap_agent(object)  # type: ignore[type-var]


class TestRouter:
    async def test_a_drop_at_most_once_is_a_not_found_dead_letter(
        self, autojump_clock: Any
    ) -> None:
        """The delivery layer sees a dropped envelope as one its route could not place."""
        injector = FaultInjector()
        async with open_message_system(routed_through(injector.router(drop=1.0))) as system:
            handled: list[Any] = []
            await system.spawn(Counter, handled, name="counter")
            with pytest.raises(AgentNotFound):
                await system.send_message(cast(None, "lost", AT_MOST_ONCE, recipient="counter"))
            [letter] = system.dead_letters
            assert (letter.envelope.payload, letter.reason) == ("lost", DeadLetterReason.NOT_FOUND)
            assert handled == []
        assert injector.stats().drops == 1

    async def test_a_drop_under_at_least_once_is_retried_until_it_gets_through(
        self, autojump_clock: Any
    ) -> None:
        """Each retry asks the router again; a later one that is not dropped delivers it."""
        injector = FaultInjector(seed=3)
        async with open_message_system(routed_through(injector.router(drop=0.5))) as system:
            handled: list[Any] = []
            await system.spawn(Counter, handled, name="counter")
            for number in range(10):
                await system.send_message(cast(None, number, recipient="counter"))
            await trio.sleep(10)
            stats = system.delivery.get_stats()
        lost = {letter.envelope.payload for letter in system.dead_letters}
        assert set(handled) | lost == set(range(10))
        assert stats.retried >= injector.stats().drops > 0

    async def test_a_duplicate_is_handled_twice_at_least_once(self, autojump_clock: Any) -> None:
        """At least once promises no dedup: a doubled envelope runs twice."""
        injector = FaultInjector()
        async with open_message_system(routed_through(injector.router(duplicate=1.0))) as system:
            handled: list[Any] = []
            await system.spawn(Counter, handled, name="counter")
            await system.send_message(cast(None, "twice", recipient="counter"))
            await trio.testing.wait_all_tasks_blocked()
        assert handled == ["twice", "twice"]
        assert injector.stats().duplicates == 1

    async def test_a_duplicate_is_suppressed_exactly_once(self, autojump_clock: Any) -> None:
        """Exactly once recognises the second copy by its message id."""
        injector = FaultInjector()
        async with open_message_system(routed_through(injector.router(duplicate=1.0))) as system:
            handled: list[Any] = []
            await system.spawn(Counter, handled, name="counter")
            await system.send_message(cast(None, "once", EXACTLY_ONCE, recipient="counter"))
            await trio.testing.wait_all_tasks_blocked()
            assert system.delivery.get_stats().duplicates_suppressed == 1
        assert handled == ["once"]

    async def test_it_routes_through_the_inner_router(self, autojump_clock: Any) -> None:
        """Faults apply to what the wrapped router chose."""

        class ToAuditor:
            def route(self, envelope: Any, system: MessageSystem) -> list[Any]:
                return [system.ref("auditor")]

        injector = FaultInjector()
        async with open_message_system(routed_through(injector.router(ToAuditor()))) as system:
            probe = await TestProbe.spawn(system, name="auditor")
            await system.send_message(cast(None, "audited", recipient="anyone"))
            assert await probe.expect() == "audited"
        assert injector.stats().routed == 1

    def test_a_bad_inner_router_raises_invalid_config(self) -> None:
        """The inner router must have ``route``."""
        with pytest.raises(InvalidConfig):
            FaultInjector().router(object())  # type: ignore[arg-type]


class TestLink:
    async def test_a_dropped_envelope_is_a_dead_letter_never_handled(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """The link files what it loses, so nothing vanishes silently."""
        injector = FaultInjector()
        async with injector.link(message_system, drop=1.0) as link:
            await link.send(cast(None, "lost", recipient=probe.id))
        await probe.expect_no_message()
        [letter] = message_system.dead_letters
        assert (letter.reason, letter.detail) == (DeadLetterReason.NOT_FOUND, DROPPED_IN_TRANSIT)
        assert message_system.delivery.get_stats().sent == 0  # it never entered the system

    async def test_a_dropped_call_times_out_in_its_caller(
        self, message_system: MessageSystem, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """A lost request is never answered: its caller's deadline ends the wait."""
        injector = FaultInjector()
        envelope, reply = call(None, "anyone there?", timeout=2.0, recipient=probe.id)
        async with injector.link(message_system, drop=1.0) as link:
            await link.send(envelope)
        with pytest.raises(CallTimeout):
            await reply

    async def test_a_duplicated_envelope_arrives_twice(self, probe: TestProbe) -> None:
        """Both copies carry the same message id."""
        injector = FaultInjector()
        async with injector.link(probe.ref._system, duplicate=1.0) as link:
            await link.send(cast(None, "echo", recipient=probe.id))
        assert await probe.expect_n(2) == ["echo", "echo"]
        first, second = probe.received
        assert first.envelope.id == second.envelope.id

    async def test_a_delayed_envelope_arrives_after_the_delay(
        self, message_system: MessageSystem, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """The link's task sends it ``delay`` seconds later."""
        injector = FaultInjector()
        started = trio.current_time()
        async with injector.link(message_system, delay=4.0) as link:
            await link.send(cast(None, "late", recipient=probe.id))
            await probe.expect_no_message(within=3.9)
            assert await probe.expect("late") == "late"
        assert probe.last.at - started == pytest.approx(4.0)

    async def test_a_reordered_envelope_arrives_after_the_next_one(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """A held-back envelope goes right after the one that overtook it."""
        injector = FaultInjector()
        async with injector.link(message_system, reorder=1.0) as link:
            for word in ("first", "second", "third", "fourth"):
                await link.send(cast(None, word, recipient=probe.id))
        assert await probe.expect_n(4) == ["second", "first", "fourth", "third"]
        assert injector.stats().reorders == 2

    async def test_leaving_the_block_sends_what_is_held(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """Nothing held back for reordering is lost when the link closes."""
        injector = FaultInjector()
        async with injector.link(message_system, reorder=1.0) as link:
            await link.send(cast(None, "held", recipient=probe.id))
            await probe.expect_no_message()
        assert await probe.expect() == "held"

    async def test_leaving_with_an_error_files_what_is_held_and_delayed(
        self, message_system: MessageSystem, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """An envelope the link never sent is a dead letter, and the error passes unwrapped."""
        injector = FaultInjector()

        async def send_then_fail() -> None:
            async with injector.link(message_system, reorder=1.0) as link:
                await link.send(cast(None, "held", recipient=probe.id))
                link.delay = 5.0
                await link.send(cast(None, "delayed", recipient=probe.id))
                raise LookupError("the test failed")

        with pytest.raises(LookupError, match="the test failed"):
            await send_then_fail()
        letters = {letter.envelope.payload: letter.reason for letter in message_system.dead_letters}
        assert letters == {"held": DeadLetterReason.EXPIRED, "delayed": DeadLetterReason.EXPIRED}

    async def test_a_link_sends_only_envelopes(self, message_system: MessageSystem) -> None:
        """Anything else is an ``InvalidMessage`` (a ``TypeError``)."""
        async with FaultInjector().link(message_system) as link:
            with pytest.raises(TypeError):
                await link.send("not an envelope")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "options", [{"drop": 2}, {"duplicate": -1}, {"reorder": "often"}, {"delay": math.nan}]
    )
    async def test_bad_options_raise_invalid_config(
        self, message_system: MessageSystem, options: dict[str, Any]
    ) -> None:
        """Probabilities are from 0 to 1 and delays are seconds."""
        with pytest.raises(InvalidConfig):
            async with FaultInjector().link(message_system, **options):
                pass


class TestStats:
    def test_a_fresh_injector_has_made_no_fault(self) -> None:
        """Every count starts at zero."""
        stats = FaultInjector().stats()
        assert stats == FaultStats(
            handler_runs=0, crashes=0, delays=0, routed=0, drops=0, duplicates=0, reorders=0
        )
        assert stats.total == 0

    async def test_total_counts_every_fault_of_every_kind(
        self, message_system: MessageSystem, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """Crashes, delays, drops, duplicates and reorders all add up in ``total``."""
        injector = FaultInjector()
        agent = await message_system.spawn(injector.wrap_agent(Counter, crash_on={1}), [])
        with pytest.raises(CallFailed):
            await agent.call("crash")
        async with injector.link(message_system, drop=1.0) as link:
            await link.send(cast(None, "lost", recipient=probe.id))
        stats = injector.stats()
        assert (stats.crashes, stats.drops, stats.total) == (1, 1, 2)

    def test_a_negative_seed_raises_invalid_config(self) -> None:
        """Seeds are ints >= 0 (or None for a fresh one)."""
        with pytest.raises(InvalidConfig):
            FaultInjector(seed=-1)
