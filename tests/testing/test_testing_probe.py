"""``TestProbe``: records what agents send it, and asserts on it on Trio's clock.

These tests use the kit's own pytest plugin (the ``message_system`` and ``probe`` fixtures),
as a user's tests would.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    Down,
    MessageKind,
    MessageSystem,
    Priority,
    StopReason,
)
from terraphim_actors.errors import CallFailed, InvalidConfig, ReplyAlreadySent
from terraphim_actors.testing import ExpectationFailed, ReceivedMessage, TestProbe


@attrs.frozen
class Greeting:
    name: str


class Greeter(Agent):
    """Casts a ``Greeting`` to the ref it was given for every name it is cast."""

    def __init__(self, listener: AgentRef) -> None:
        self.listener = listener

    async def handle_cast(self, message: str, ctx: Context) -> None:
        await self.listener.cast(Greeting(message))


class Asker(Agent):
    """Calls the ref it was given with each payload it is called with, and replies with the
    answer."""

    def __init__(self, target: AgentRef) -> None:
        self.target = target

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return await self.target.call(message, timeout=10.0)


class TestExpect:
    async def test_expect_returns_the_payload_of_the_next_message(self, probe: TestProbe) -> None:
        """``expect()`` returns what was sent."""
        await probe.ref.cast("hello")
        assert await probe.expect() == "hello"

    async def test_expect_by_type_returns_the_message(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """A class matches instances of it, and the typed message comes back."""
        greeter = await message_system.spawn(Greeter, probe.ref)
        await greeter.cast("Ada")
        greeting = await probe.expect(Greeting)
        assert greeting.name == "Ada"

    async def test_expect_by_predicate(self, probe: TestProbe) -> None:
        """A predicate matches the payloads it accepts."""
        await probe.ref.cast(41)
        assert await probe.expect(lambda number: number > 40) == 41

    async def test_expect_by_value(self, probe: TestProbe) -> None:
        """Any other value matches what compares equal to it."""
        await probe.ref.cast({"status": "done"})
        assert await probe.expect({"status": "done"}) == {"status": "done"}

    async def test_expect_by_tuple_of_types(self, probe: TestProbe) -> None:
        """A tuple of classes matches an instance of any of them."""
        await probe.ref.cast(3.5)
        assert await probe.expect((int, float)) == 3.5

    async def test_a_message_that_does_not_match_fails_the_expectation(
        self, probe: TestProbe
    ) -> None:
        """The next message must match: Akka's order-sensitive ``expectMsg``."""
        await probe.ref.cast("first")
        await probe.ref.cast(Greeting("second"))
        with pytest.raises(ExpectationFailed, match="type Greeting"):
            await probe.expect(Greeting)

    def test_expectation_failed_is_an_assertion_error(self) -> None:
        """pytest reports a failed expectation as a failed assertion."""
        assert issubclass(ExpectationFailed, AssertionError)

    async def test_expect_checks_the_kind_when_asked(self, probe: TestProbe) -> None:
        """``kind=`` also requires the message to have come as a cast, call or info."""
        await probe.ref.info("tick")
        with pytest.raises(ExpectationFailed, match="cast"):
            await probe.expect("tick", kind=MessageKind.CAST)

    async def test_messages_are_expected_in_arrival_order(self, probe: TestProbe) -> None:
        """Each expectation takes the oldest message not yet taken."""
        for word in ("one", "two", "three"):
            await probe.ref.cast(word)
        assert [await probe.expect() for _ in range(3)] == ["one", "two", "three"]

    async def test_expect_waits_for_a_message_that_comes_later(
        self, message_system: MessageSystem, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """An expectation waits for a message sent after it began."""

        async def send_later() -> None:
            await trio.sleep(2.0)
            await probe.ref.cast("late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            assert await probe.expect("late", timeout=5.0) == "late"

    async def test_expect_times_out_on_trio_time_not_real_time(
        self, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """Under ``autojump_clock`` a 60 s timeout fails at 60 s of Trio time, at once."""
        started, real_start = trio.current_time(), time.monotonic()
        with pytest.raises(ExpectationFailed, match="timed out"):
            await probe.expect(timeout=60.0)
        assert trio.current_time() - started == pytest.approx(60.0)
        assert time.monotonic() - real_start < 5.0

    async def test_the_default_timeout_is_the_probes(
        self, message_system: MessageSystem, autojump_clock: Any
    ) -> None:
        """``spawn(timeout=...)`` sets how long every expectation waits by default."""
        probe = await TestProbe.spawn(message_system, timeout=7.0)
        started = trio.current_time()
        with pytest.raises(ExpectationFailed):
            await probe.expect()
        assert trio.current_time() - started == pytest.approx(7.0)

    @pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), True])
    async def test_a_bad_timeout_raises_invalid_config(
        self, probe: TestProbe, timeout: float
    ) -> None:
        """A timeout is a positive number of seconds."""
        with pytest.raises(InvalidConfig):
            await probe.expect(timeout=timeout)


class TestExpectNoMessage:
    async def test_silence_passes(self, probe: TestProbe, autojump_clock: Any) -> None:
        """Nothing arriving within the period is what was expected; the period passes."""
        started = trio.current_time()
        await probe.expect_no_message(within=1.5)
        assert trio.current_time() - started == pytest.approx(1.5)

    async def test_a_message_within_the_period_fails(
        self, probe: TestProbe, autojump_clock: Any
    ) -> None:
        """A message arriving during the period fails the expectation when it arrives."""

        async def send_later() -> None:
            await trio.sleep(0.5)
            await probe.ref.cast("surprise")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            started = trio.current_time()
            with pytest.raises(ExpectationFailed, match="surprise"):
                await probe.expect_no_message(within=2.0)
            assert trio.current_time() - started == pytest.approx(0.5)

    async def test_a_message_already_waiting_fails(self, probe: TestProbe) -> None:
        """A message received earlier and not expected counts too."""
        await probe.ref.cast("unexpected")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ExpectationFailed, match="unexpected"):
            await probe.expect_no_message()


class TestExpectN:
    async def test_returns_the_next_n_payloads_in_order(self, probe: TestProbe) -> None:
        """``expect_n`` is Akka's ``receiveN``."""
        for number in range(5):
            await probe.ref.cast(number)
        assert await probe.expect_n(3) == [0, 1, 2]
        assert await probe.expect_n(2, int) == [3, 4]

    async def test_fewer_than_n_in_time_fails(self, probe: TestProbe, autojump_clock: Any) -> None:
        """The timeout bounds the whole batch."""
        await probe.ref.cast("only one")
        with pytest.raises(ExpectationFailed, match="message 2 of 2"):
            await probe.expect_n(2, timeout=1.0)

    async def test_each_message_must_match(self, probe: TestProbe) -> None:
        """One message that does not match fails the batch."""
        await probe.ref.cast(1)
        await probe.ref.cast("two")
        with pytest.raises(ExpectationFailed, match="message 2 of 2"):
            await probe.expect_n(2, int)


class TestFishFor:
    async def test_skips_messages_until_one_matches(self, probe: TestProbe) -> None:
        """Chatter before the message of interest is discarded from the queue."""
        for payload in ("noise", 7, "more noise", Greeting("Grace"), "after"):
            await probe.ref.cast(payload)
        assert await probe.fish_for(Greeting) == Greeting("Grace")
        assert await probe.expect() == "after"

    async def test_discarded_messages_stay_in_received(self, probe: TestProbe) -> None:
        """``received`` keeps everything, expected or skipped."""
        await probe.ref.cast("noise")
        await probe.ref.cast("signal")
        await probe.fish_for("signal")
        assert [message.payload for message in probe.received] == ["noise", "signal"]

    async def test_no_match_in_time_fails(self, probe: TestProbe, autojump_clock: Any) -> None:
        """Fishing without a catch times out."""
        await probe.ref.cast("noise")
        with pytest.raises(ExpectationFailed, match="timed out"):
            await probe.fish_for(Greeting, timeout=1.0)


class TestRecords:
    async def test_received_records_kind_priority_and_sender(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """Each record tells how the message came and from which agent."""
        greeter = await message_system.spawn(Greeter, probe.ref)
        await greeter.cast("Alan")
        await probe.expect(Greeting)
        await probe.ref.info("tick", priority=Priority.HIGH)
        await probe.expect("tick")
        [greeting, tick] = probe.received
        assert isinstance(greeting, ReceivedMessage)
        assert (greeting.kind, greeting.sender) == (MessageKind.CAST, greeter.id)
        assert (tick.kind, tick.sender, tick.envelope.priority) == (
            MessageKind.INFO,
            None,
            Priority.HIGH,
        )

    async def test_last_is_the_message_the_latest_expectation_took(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """``last.sender`` is Akka's ``lastSender``."""
        greeter = await message_system.spawn(Greeter, probe.ref)
        await greeter.cast("Barbara")
        await probe.expect(Greeting)
        assert probe.last.sender == greeter.id

    async def test_last_before_any_expectation_fails(self, probe: TestProbe) -> None:
        """There is no last message before an expectation returned one."""
        with pytest.raises(ExpectationFailed):
            _ = probe.last

    async def test_queued_counts_what_no_expectation_took(self, probe: TestProbe) -> None:
        """``queued`` is the number of messages still to be expected."""
        await probe.ref.cast(1)
        await probe.ref.cast(2)
        await trio.testing.wait_all_tasks_blocked()
        await probe.expect()
        assert probe.queued == 1

    async def test_a_probe_built_directly_has_no_ref(self) -> None:
        """Only ``TestProbe.spawn`` gives a probe an agent."""
        with pytest.raises(RuntimeError, match="spawn"):
            _ = TestProbe().ref

    async def test_received_outlives_a_restart_of_the_probe_agent(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """The records belong to the probe, not to the agent instance."""
        await probe.ref.cast("before")
        await probe.expect()
        await message_system.stop(probe.ref)
        assert [message.payload for message in probe.received] == ["before"]


class TestCalls:
    async def test_a_call_waits_for_the_tests_reply(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """Without a reply rule, the test answers the call it expected."""
        asker = await message_system.spawn(Asker, probe.ref)
        async with trio.open_nursery() as nursery:
            answers: list[Any] = []

            async def ask() -> None:
                answers.append(await asker.call("question"))

            nursery.start_soon(ask)
            assert await probe.expect("question", kind=MessageKind.CALL) == "question"
            assert await probe.reply("answer") is True
        assert answers == ["answer"]

    async def test_fail_makes_the_call_raise_in_the_caller(self, probe: TestProbe) -> None:
        """``probe.fail(error)`` makes the caller's call raise ``CallFailed`` from ``error``."""
        async with trio.open_nursery() as nursery:
            errors: list[BaseException | None] = []

            async def ask() -> None:
                try:
                    await probe.ref.call("question")
                except CallFailed as error:
                    errors.append(error.__cause__)

            nursery.start_soon(ask)
            await probe.expect("question")
            await probe.fail(LookupError("no such thing"))
        assert [str(error) for error in errors] == ["no such thing"]

    async def test_a_call_answered_twice_raises_reply_already_sent(self, probe: TestProbe) -> None:
        """A call has one answer."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.ref.call, "question")
            await probe.expect("question")
            await probe.reply(1)
            with pytest.raises(ReplyAlreadySent):
                await probe.reply(2)

    async def test_replying_to_a_cast_fails(self, probe: TestProbe) -> None:
        """Only a call can be answered."""
        await probe.ref.cast("not a question")
        await probe.expect()
        with pytest.raises(ExpectationFailed, match="not a call"):
            await probe.reply("answer")

    async def test_a_reply_rule_answers_every_call(self, message_system: MessageSystem) -> None:
        """``reply=`` answers at once with a function of the payload; calls are still recorded."""
        probe = await TestProbe.spawn(message_system, reply=lambda number: number * 2)
        assert await probe.ref.call(21) == 42
        assert await probe.expect(kind=MessageKind.CALL) == 21

    async def test_a_reply_rule_that_raises_fails_the_call_and_the_probe_runs_on(
        self, message_system: MessageSystem
    ) -> None:
        """The caller gets ``CallFailed`` (as from a crashed callee); the probe does not crash."""
        probe = await TestProbe.spawn(message_system, reply=lambda number: 1 / number)
        with pytest.raises(CallFailed) as raised:
            await probe.ref.call(0)
        assert isinstance(raised.value.__cause__, ZeroDivisionError)
        assert await probe.ref.call(4) == 0.25
        assert message_system.get_stats()[0].agent_crashes == 0


class TestWatch:
    async def test_expect_terminated_returns_the_down_of_a_watched_agent(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """A watched agent that stops for good sends the probe its ``Down``."""
        watched = await message_system.spawn(Greeter, probe.ref)
        await probe.watch(watched)
        await message_system.stop(watched)
        down = await probe.expect_terminated(watched)
        assert isinstance(down, Down)
        assert down.reason is StopReason.NORMAL

    async def test_another_message_first_fails_expect_terminated(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """``expect_terminated`` is order-sensitive, as Akka's is."""
        watched = await message_system.spawn(Greeter, probe.ref)
        await probe.watch(watched)
        await watched.cast("Edsger")
        await trio.testing.wait_all_tasks_blocked()  # greeted before the stop
        await message_system.stop(watched)
        with pytest.raises(ExpectationFailed):
            await probe.expect_terminated(watched)

    async def test_watching_a_pool_raises_invalid_config(
        self, message_system: MessageSystem, probe: TestProbe
    ) -> None:
        """A pool is not one agent: it cannot be watched."""
        pool = await message_system.spawn_pool(Greeter, probe.ref, size=2)
        with pytest.raises(InvalidConfig):
            await probe.watch(pool)


class TestSpawn:
    async def test_a_named_probe_is_found_by_name(self, message_system: MessageSystem) -> None:
        """Code that looks agents up by name finds the probe."""
        probe = await TestProbe.spawn(message_system, name="billing")
        await message_system.ref("billing").cast("invoice")
        assert await probe.expect() == "invoice"

    async def test_a_reply_rule_must_be_callable(self, message_system: MessageSystem) -> None:
        """``reply=`` is a function, not a constant."""
        with pytest.raises(InvalidConfig):
            await TestProbe.spawn(message_system, reply="pong")  # type: ignore[arg-type]

    def test_pytest_does_not_collect_the_probe(self) -> None:
        """Its name starts with ``Test``; ``__test__ = False`` keeps pytest off it."""
        assert TestProbe.__test__ is False
