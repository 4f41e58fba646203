"""Admission budgets on the virtual clock: messages wait in delivery for them, in priority
order; a handler charges tokens and asks for a retry after a time; a deadline that cannot be
met is refused at once; a pool falls back. The books balance in each."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    CircuitBreakerConfig,
    CircuitState,
    ConcurrencyLimit,
    Context,
    DeadLetterReason,
    DeliveryGuarantee,
    Instrument,
    MailboxConfig,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    Priority,
    RateLimit,
    RouterConfig,
    TokenBudget,
    open_message_system,
)
from terraphim_actors.errors import AgentStopped, CallTimeout, InvalidConfig

AT_MOST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)


def settled(system: MessageSystem) -> None:
    """The books balance, with nothing pending and nothing waiting for admission."""
    stats = system.delivery.get_stats()
    assert stats.sent == (
        stats.acknowledged
        + stats.duplicates_suppressed
        + stats.failed
        + stats.dead_lettered
        + stats.forwarded
        + stats.pending
    ), stats
    assert stats.pending == 0, stats
    assert stats.admission_waiting == 0, stats


class Recorder(Agent):
    """Records (payload, Trio time) of each message it handles; a call answers the payload.

    A payload ``("busy", seconds)`` makes its first attempt ask for a retry after
    ``seconds``; ``("cost", tokens)`` charges ``tokens``; ``("sleep", s)`` takes ``s``.
    """

    async def on_start(self) -> None:
        self.seen: list[tuple[Any, float]] = []
        self.attempts: dict[Any, int] = {}

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await self._handle(message, ctx)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "seen":
            return [payload for payload, _ in self.seen]
        if message == "times":
            return [time for _, time in self.seen]
        return await self._handle(message, ctx)

    async def _handle(self, message: Any, ctx: Context) -> Any:
        self.attempts[message] = self.attempts.get(message, 0) + 1
        if isinstance(message, tuple) and message[0] == "busy" and self.attempts[message] == 1:
            ctx.retry_after(message[1])
            return "not this time"
        if isinstance(message, tuple) and message[0] == "cost":
            ctx.charge(tokens=message[1])
        if isinstance(message, tuple) and message[0] == "sleep":
            await trio.sleep(message[1])
        self.seen.append((message, trio.current_time()))
        return message


class TestRetryAfter:
    async def test_a_call_gets_the_answer_of_the_attempt_after_the_wait(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder)
        start = trio.current_time()
        assert await ref.call(("busy", 2.0), timeout=10.0) == ("busy", 2.0)
        assert trio.current_time() - start == pytest.approx(2.0)
        settled(system)

    async def test_it_is_neither_a_failure_nor_a_retry(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast asked to wait is handled later, with no retry spent even when it has none
        (max_retries=0), and counted once, as acknowledged."""
        ref = await system.spawn(Recorder)
        await ref.cast(("busy", 1.0), options=MessageOptions(max_retries=0))
        await trio.sleep(1.5)
        assert await ref.call("seen") == [("busy", 1.0)]
        stats = system.delivery.get_stats()
        assert (stats.retried, stats.failed, stats.dead_lettered) == (0, 0, 0)
        assert stats.acknowledged == 2
        settled(system)

    async def test_an_at_most_once_message_runs_again_too(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Its handler asked for the second run: that is no redelivery of a failure."""
        ref = await system.spawn(Recorder)
        await ref.cast(("busy", 1.0), options=AT_MOST_ONCE)
        await trio.sleep(1.5)
        assert await ref.call("seen") == [("busy", 1.0)]
        settled(system)

    async def test_other_messages_wait_behind_it(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The agent's admission is held: what is sent meanwhile waits (counted as waiting
        for admission), then follows the retried message."""
        ref = await system.spawn(Recorder)
        start = trio.current_time()
        await ref.cast(("busy", 3.0))
        await trio.sleep(1.0)
        await ref.cast("later")
        assert system.delivery.get_stats().admission_waiting == 2
        assert await ref.call("times", timeout=10.0) == [pytest.approx(start + 3.0)] * 2
        assert await ref.call("seen") == [("busy", 3.0), "later"]
        settled(system)

    async def test_a_wait_of_no_time_runs_the_message_again_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``ctx.retry_after(0)`` (a 429 with ``Retry-After: 0``, or a date already past): the
        call is handled again at once, and a cast too."""
        ref = await system.spawn(Recorder)
        start = trio.current_time()
        assert await ref.call(("busy", 0.0), timeout=10.0) == ("busy", 0.0)
        await ref.cast(("busy", 0))
        assert await ref.call("seen") == [("busy", 0.0), ("busy", 0)]
        assert trio.current_time() == start
        settled(system)

    async def test_a_message_waiting_for_the_place_it_held_waits_out_the_hold(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With one concurrency place, a call waiting for it while the handler in the place
        asks for a retry after 3 s is not let through by the place given back: it follows
        the retried message once the 3 s are over."""
        async with open_message_system() as system:
            ref = await system.spawn(Recorder, admission=[ConcurrencyLimit(1)])
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.call, ("sleep", 1.0))
                await trio.sleep(0.5)
                nursery.start_soon(ref.call, ("busy", 3.0))
                await trio.sleep(0.1)
                nursery.start_soon(ref.call, "waiting")
            times = await ref.call("times")
            assert await ref.call("seen") == [("sleep", 1.0), ("busy", 3.0), "waiting"]
            assert times == pytest.approx([start + 1.0, start + 4.0, start + 4.0])
            settled(system)

    async def test_a_call_whose_deadline_comes_first_gets_call_timeout_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder)
        start = trio.current_time()
        with pytest.raises(CallTimeout, match="deadline could not be met"):
            await ref.call(("busy", 30.0), timeout=5.0)
        assert trio.current_time() == start
        assert system.delivery.get_stats().failed == 1
        settled(system)

    async def test_a_cast_whose_timeout_comes_first_is_an_expired_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder)
        await ref.cast(("busy", 30.0), options=MessageOptions(timeout=10.0))
        await ref.call("seen")
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.EXPIRED
        assert "deadline could not be met" in letter.detail
        settled(system)

    async def test_a_pool_member_holds_the_whole_pool(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        class AsksOnce(Recorder):
            asked = False

            async def handle_cast(self, message: Any, ctx: Context) -> None:
                if not AsksOnce.asked:
                    AsksOnce.asked = True
                    ctx.retry_after(2.0)

        pool = await system.spawn_pool(AsksOnce, size=2)
        start = trio.current_time()
        await pool.cast("busy")
        await trio.sleep(0.5)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.call, "other")
        assert trio.current_time() - start == pytest.approx(2.0)
        settled(system)

    async def test_outside_a_handler_it_is_refused(self, system: MessageSystem) -> None:
        class AsksInStart(Agent):
            async def on_start(self, ctx: Context) -> None:
                ctx.retry_after(1.0)

        with pytest.raises(Exception, match=r"ctx\.retry_after is for a handler") as raised:
            await system.spawn(AsksInStart)
        assert isinstance(raised.value.__cause__, InvalidConfig)

    @pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), "1", True])
    async def test_bad_seconds_are_refused(self, system: MessageSystem, seconds: Any) -> None:
        class Asks(Agent):
            async def handle_call(self, message: Any, ctx: Context) -> Any:
                with pytest.raises(InvalidConfig):
                    ctx.retry_after(message)
                return "refused"

        ref = await system.spawn(Asks)
        assert await ref.call(seconds) == "refused"


class TestCharge:
    async def test_without_a_budget_it_is_harmless(self, system: MessageSystem) -> None:
        """The charge is answered as any message and makes no budget for the agent."""
        ref = await system.spawn(Recorder)
        assert await ref.call(("cost", 1_000_000)) == ("cost", 1_000_000)
        assert ref.id not in system.get_stats()[0].admission
        settled(system)

    async def test_charges_delay_admission_until_they_age_out(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Over budget after the first message (an overdraft): the next waits until the
        charge is older than the period."""
        ref = await system.spawn(Recorder, admission=[TokenBudget(tokens=100, per=10.0)])
        start = trio.current_time()
        await ref.call(("cost", 150))
        await ref.call(("cost", 10), timeout=20.0)
        assert trio.current_time() - start == pytest.approx(10.0)
        settled(system)

    @pytest.mark.parametrize("tokens", [-1, 1.5, "3", None, True])
    async def test_bad_tokens_are_refused(self, system: MessageSystem, tokens: Any) -> None:
        class Charges(Agent):
            async def handle_call(self, message: Any, ctx: Context) -> Any:
                with pytest.raises(InvalidConfig):
                    ctx.charge(tokens=message)
                return "refused"

        ref = await system.spawn(Charges)
        assert await ref.call(tokens) == "refused"

    async def test_outside_a_handler_it_is_refused(self, system: MessageSystem) -> None:
        class ChargesInStart(Agent):
            async def on_start(self, ctx: Context) -> None:
                ctx.charge(tokens=1)

        with pytest.raises(Exception, match=r"ctx\.charge is for a handler"):
            await system.spawn(ChargesInStart)


class TestRateLimit:
    async def test_messages_over_the_rate_wait_for_the_window(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two a second: five casts are handled two at 0 s, two at 1 s, one at 2 s; the
        senders never waited."""
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=2, per=1.0)])
        start = trio.current_time()
        for n in range(5):
            ref.cast_nowait(n)
        assert trio.current_time() == start
        assert system.delivery.get_stats().admission_waiting == 3
        await trio.sleep(3.0)
        times = await ref.call("times")
        assert [t - start for t in times] == [0.0, 0.0, 1.0, 1.0, 2.0]
        settled(system)

    async def test_a_window_that_ends_at_a_rounded_time_lets_the_next_one_through(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """One a second, admitted at 3.6 s: the next goes at 4.6 s, though 4.6 - 1.0 is
        3.5999999999999996 in floating point (it once waited until another message came)."""
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=1.0)])
        await trio.sleep_until(3.6)
        ref.cast_nowait("first")
        ref.cast_nowait("second")
        await trio.sleep(2.0)
        assert system.delivery.get_stats().admission_waiting == 0
        assert await ref.call("times") == [3.6, 4.6]
        settled(system)

    async def test_waiting_messages_go_highest_priority_first_then_in_order(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=1.0)])
        await ref.cast("first")
        for payload, priority in [
            ("low", Priority.LOW),
            ("normal-1", Priority.NORMAL),
            ("high", Priority.HIGH),
            ("normal-2", Priority.NORMAL),
        ]:
            await ref.cast(payload, priority=priority)
        await trio.sleep(5.0)
        seen = await ref.call("seen", timeout=10.0)
        assert seen == ["first", "high", "normal-1", "normal-2", "low"]
        settled(system)

    async def test_a_pool_shares_one_budget(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        pool = await system.spawn_pool(
            Recorder, size=3, admission=[RateLimit(requests=2, per=10.0)]
        )
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(pool.call, n, 30.0)
        assert trio.current_time() - start == pytest.approx(10.0)
        settled(system)

    async def test_a_call_that_could_not_be_admitted_in_time_is_refused_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=60.0)])
        await ref.call("first")
        start = trio.current_time()
        with pytest.raises(CallTimeout, match="deadline could not be met"):
            await ref.call("second", timeout=5.0)
        assert trio.current_time() == start
        stats = system.delivery.get_stats()
        assert stats.failed == 1
        assert system.get_stats()[0].admission[ref.id].refused == 1
        settled(system)

    async def test_the_estimate_counts_the_messages_waiting_ahead(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """One a second and ten casts ahead of it: a call with 3 s to live is refused at once,
        though the next place frees in a second."""
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=1.0)])
        for n in range(10):
            await ref.cast(n)
        start = trio.current_time()
        with pytest.raises(CallTimeout, match="could not be met"):
            await ref.call("late", timeout=3.0)
        assert trio.current_time() == start
        await trio.sleep(10.0)
        settled(system)

    async def test_the_estimate_counts_the_recent_handling_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Three handlers of 4 s bring the moving average to about 2 s: a call that the rate
        admits in 1 s, with 2.5 s left, is refused (it would be let through without it)."""
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=1.0)])
        for _ in range(3):
            await ref.call(("sleep", 4.0), timeout=10.0)
        await ref.cast("takes the place")
        with pytest.raises(CallTimeout, match="deadline could not be met"):
            await ref.call("late", timeout=2.5)

    async def test_a_cast_that_could_not_be_admitted_in_time_is_an_expired_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=60.0)])
        await ref.cast("first")
        await ref.cast("second", options=MessageOptions(timeout=10.0))
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.EXPIRED
        await trio.testing.wait_all_tasks_blocked()
        settled(system)

    @pytest.mark.parametrize("admission", [RateLimit(requests=1), ["x"], "x"])
    async def test_spawn_refuses_what_is_not_a_list_of_budgets(
        self, system: MessageSystem, admission: Any
    ) -> None:
        with pytest.raises(InvalidConfig):
            await system.spawn(Recorder, admission=admission)
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(Recorder, size=2, admission=admission)


class TestConcurrencyLimit:
    async def test_a_pool_has_at_most_its_limit_in_handlers(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Four members, two places: four calls of 1 s each take 2 s; a place frees as a
        handler ends, with nothing else to wake the waiting."""
        pool = await system.spawn_pool(Recorder, size=4, admission=[ConcurrencyLimit(2)])
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pool.call, ("sleep", 1.0), 10.0)
            await trio.sleep(0.5)
            [usage] = system.get_stats()[0].admission[pool.id].budgets
            assert (usage.used, usage.limit) == (2, 2)
        assert trio.current_time() - start == pytest.approx(2.0)
        settled(system)

    async def test_a_place_is_given_back_when_a_handler_crashes(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        class Fails(Agent):
            async def handle_call(self, message: Any, ctx: Context) -> Any:
                if message == "fail":
                    raise ValueError("no")
                return message

        ref = await system.spawn(Fails, admission=[ConcurrencyLimit(1)])
        with pytest.raises(Exception, match="no"):
            await ref.call("fail")
        assert await ref.call("ok") == "ok"
        settled(system)

    async def test_a_place_is_given_back_by_an_agent_that_slept(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast and a call wake it from hibernation in turn, each in the one place."""
        ref = await system.spawn(Recorder, admission=[ConcurrencyLimit(1)], hibernate_after=1.0)
        await trio.sleep(2.0)
        assert system.get_stats()[0].agents_hibernated == 1
        await ref.cast("wakes it")
        assert await ref.call("then this") == "then this"
        await trio.sleep(2.0)
        assert await ref.call("and after another sleep") == "and after another sleep"
        assert system.get_stats()[0].admission[ref.id].budgets[0].used == 0
        settled(system)

    async def test_a_place_is_given_back_when_its_caller_gives_up(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        ref = await system.spawn(Recorder, admission=[ConcurrencyLimit(1)])
        with trio.move_on_after(1.0):
            await ref.call(("sleep", 100.0), timeout=200.0)
        assert await ref.call("next") == "next"
        settled(system)

    async def test_a_place_is_given_back_by_a_message_that_expired_in_the_mailbox(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Admitted into the second place, the cast expires behind a 5 s handler: a dead
        letter, and its place is free again."""
        ref = await system.spawn(Recorder, admission=[ConcurrencyLimit(2)])
        await ref.cast(("sleep", 5.0))
        await ref.cast("expires", options=MessageOptions(timeout=1.0))
        await trio.sleep(6.0)
        assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.EXPIRED]
        assert system.get_stats()[0].admission[ref.id].budgets[0].used == 0
        settled(system)


class TestFallback:
    async def test_a_pool_whose_budget_is_spent_beyond_the_deadline_falls_back(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        spare = await system.spawn(Recorder)
        pool = await system.spawn_pool(
            Recorder, size=2, admission=[RateLimit(requests=1, per=60.0)], fallback=spare
        )
        assert await pool.call("first") == "first"
        assert await pool.call("second", timeout=5.0) == "second"
        assert await spare.call("seen") == ["second"]
        assert system.delivery.get_stats().fallbacks == 1
        settled(system)

    async def test_a_pool_whose_circuits_are_open_falls_back(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        class Broken(Agent):
            resume_on = (ValueError,)

            async def handle_call(self, message: Any, ctx: Context) -> Any:
                raise ValueError("down")

        spare = await system.spawn(Recorder)
        pool = await system.spawn_pool(Broken, size=1, fallback=spare)
        for _ in range(5):  # the default breaker opens after five failures
            with pytest.raises(Exception, match="down"):
                await pool.call("x")
        assert await pool.call("to the spare") == "to the spare"
        await pool.cast("cast too")
        assert await spare.call("seen") == ["to the spare", "cast too"]
        assert system.delivery.get_stats().fallbacks == 2
        settled(system)

    async def test_a_call_that_times_out_at_the_fallback_counts_against_the_fallback(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The pool's member never saw the call: its circuit stays closed; the slow spare's,
        which let it time out, opens (a breaker of one failure)."""
        breaker = CircuitBreakerConfig(failure_threshold=1)
        config = MessageSystemConfig(router=RouterConfig(circuit_breaker=breaker))
        async with open_message_system(config) as system:
            spare = await system.spawn(Recorder)
            pool = await system.spawn_pool(
                Recorder, size=1, admission=[RateLimit(requests=1, per=60.0)], fallback=spare
            )
            assert await pool.call("first") == "first"
            with pytest.raises(CallTimeout):
                await pool.call(("sleep", 10.0), timeout=5.0)
            assert system.router.stats().circuits == {spare.id: CircuitState.OPEN}
            await trio.sleep(10.0)

    async def test_a_full_concurrency_limit_falls_back_by_the_handling_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Its one place is taken, and handlers take 1 s on average (after one of 5 s): a call
        with 1 s to live goes to the spare at once."""
        spare = await system.spawn(Recorder)
        pool = await system.spawn_pool(
            Recorder, size=1, admission=[ConcurrencyLimit(1)], fallback=spare
        )
        await pool.call(("sleep", 5.0), timeout=10.0)
        await pool.cast(("sleep", 10.0))
        assert await pool.call("quick", timeout=1.0) == "quick"
        assert system.delivery.get_stats().fallbacks == 1
        await trio.sleep(11.0)
        settled(system)

    async def test_a_message_that_waited_falls_back_when_its_deadline_cannot_be_met(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """It waited for the rate window; by then handlers took 1 s on average (after one of
        5 s), more than it had left: the spare takes it, rather than a dead letter."""
        spare = await system.spawn(Recorder)
        pool = await system.spawn_pool(
            Recorder, size=1, admission=[RateLimit(requests=1, per=10.0)], fallback=spare
        )
        await pool.cast(("sleep", 5.0))
        await pool.cast("waits", options=MessageOptions(timeout=10.5))
        await trio.sleep(11.0)
        assert await spare.call("seen") == ["waits"]
        assert not system.dead_letters
        settled(system)

    async def test_the_fallback_must_be_a_ref(self, system: MessageSystem) -> None:
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(Recorder, size=1, fallback="spare")  # type: ignore[arg-type]


class TestInstrument:
    async def test_admission_waited_tells_how_long_a_message_waited(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        waits: list[tuple[Any, Any, float]] = []

        class Waits(Instrument):
            def admission_waited(self, agent_id: Any, envelope: Any, waited: float) -> None:
                waits.append((agent_id, envelope.payload, waited))

        config = MessageSystemConfig(instruments=[Waits()])
        async with open_message_system(config) as system:
            ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=2.0)])
            await ref.cast("first")
            await ref.cast("second")
            await trio.sleep(3.0)
            assert waits == [(ref.id, "second", pytest.approx(2.0))]
            settled(system)


class TestCircuit:
    async def test_calls_that_time_out_waiting_for_admission_do_not_open_the_circuit(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The agent never saw them: five timeouts (the default breaker's threshold) while a
        long handler holds the only place leave its circuit closed."""
        ref = await system.spawn(Recorder, admission=[ConcurrencyLimit(1)])
        await ref.cast(("sleep", 100.0))
        for _ in range(5):
            with pytest.raises(CallTimeout):
                await ref.call("waits", timeout=1.0)
        assert system.router.stats().open_circuits == 0
        await trio.sleep(100.0)
        settled(system)


class TestManyWaiting:
    async def test_a_mailbox_that_refuses_what_the_budgets_let_through_settles_them_all(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Fifteen hundred casts wait behind a retry_after; when it ends, the budgets let them
        all through at once, behind the retried one, and a mailbox of one refuses them: each
        is a dead letter (at most once), with no failure of one waking the next inside it."""
        ref = await system.spawn(
            Recorder,
            mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT),
        )
        await ref.cast(("busy", 1.0))
        await trio.testing.wait_all_tasks_blocked()
        for n in range(1_500):
            await ref.cast(n, options=AT_MOST_ONCE)
        await trio.sleep(2.0)
        assert system.delivery.get_stats().dead_lettered == 1_500
        settled(system)


class TestStoppedAgent:
    async def test_a_call_waiting_for_a_stopped_agent_fails_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Its budget would let the call through only in 30 s: the stop at 1 s fails it then
        with AgentStopped, and a cast waiting beside it is a dead letter then."""
        ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=30.0)])
        await ref.cast("first")
        await ref.cast("waits", options=MessageOptions(timeout=60.0))
        failed_at: list[float] = []

        async def call() -> None:
            with pytest.raises(AgentStopped):
                await ref.call("also waits", timeout=60.0)
            failed_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(1.0)
            await system.stop(ref)
        assert failed_at == [pytest.approx(1.0)]
        assert [letter.reason for letter in system.dead_letters] == [DeadLetterReason.AGENT_STOPPED]
        settled(system)

    @pytest.mark.parametrize("stopped", [0, 1])
    async def test_a_pool_message_waits_on_for_the_member_left(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock, stopped: int
    ) -> None:
        """Whichever member stops, what waits for the pool's budget goes to the other."""
        pool = await system.spawn_pool(
            Recorder, size=2, admission=[RateLimit(requests=1, per=30.0)]
        )
        await pool.call("first")
        await pool.cast("waits", options=MessageOptions(timeout=60.0))
        members = pool.members
        await system.stop(members[stopped])
        await trio.sleep(31.0)
        assert system.delivery.get_stats().acknowledged == 2
        settled(system)

    async def test_a_pool_call_fails_at_once_when_no_member_is_left(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        pool = await system.spawn_pool(
            Recorder, size=2, admission=[RateLimit(requests=1, per=30.0)]
        )
        await pool.call("first")
        failed_at: list[float] = []

        async def call() -> None:
            with pytest.raises(AgentStopped):
                await pool.call("waits", timeout=60.0)
            failed_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(1.0)
            for member in pool.members:
                await system.stop(member)
        assert failed_at == [pytest.approx(1.0)]
        settled(system)


class TestShutdown:
    async def test_what_waits_at_shutdown_is_a_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_message_system() as system:
            ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=60.0)])
            await ref.cast("first")
            await ref.cast("waits", options=MessageOptions(timeout=120.0))
            assert system.delivery.get_stats().admission_waiting == 1
        assert [letter.reason for letter in system.dead_letters] == [
            DeadLetterReason.SYSTEM_STOPPED
        ]
        settled(system)

    async def test_a_call_waiting_at_shutdown_fails_as_its_agent_stops(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        errors: list[Exception] = []

        async def call(ref: Any) -> None:
            try:
                await ref.call("waits", timeout=120.0)
            except Exception as error:
                errors.append(error)

        async with trio.open_nursery() as nursery, open_message_system() as system:
            ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=60.0)])
            await ref.cast("first")
            nursery.start_soon(call, ref)
            await trio.testing.wait_all_tasks_blocked()
            assert system.delivery.get_stats().admission_waiting == 1
        assert [type(error) for error in errors] == [AgentStopped]
        settled(system)

    async def test_a_retry_asked_for_at_shutdown_is_a_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The handler asks for a retry in a minute while the system shuts down: nothing would
        run it again, so its cast is settled then."""

        class AsksLate(Agent):
            async def handle_cast(self, message: Any, ctx: Context) -> None:
                await trio.sleep(1.0)
                ctx.retry_after(60.0)

        async with open_message_system() as system:
            ref = await system.spawn(AsksLate)
            await ref.cast("asks", options=MessageOptions(timeout=120.0))
            await trio.testing.wait_all_tasks_blocked()
        assert [letter.reason for letter in system.dead_letters] == [
            DeadLetterReason.SYSTEM_STOPPED
        ]
        settled(system)

    async def test_nothing_sent_after_the_shutdown_waits(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The budgets would let it through only in a minute: a stopped system does not keep
        it pending that long, it is a dead letter at once."""
        async with open_message_system() as system:
            ref = await system.spawn(Recorder, admission=[RateLimit(requests=1, per=60.0)])
            await ref.cast("first")
        ref.cast_nowait("late", options=MessageOptions(timeout=120.0))
        assert [letter.reason for letter in system.dead_letters] == [
            DeadLetterReason.SYSTEM_STOPPED
        ]
        settled(system)
