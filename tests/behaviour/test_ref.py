"""``AgentRef``: the call contract, casts and infos, and the ref's identity."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import trio
import trio.testing
from agents import (
    HUGE_PROMPT,
    Action,
    Recorder,
    Runner,
    call_and_keep,
    defer_into,
    hold_forever,
    run_action,
    until,
)
from supervised import Unprintable
from yields import StepsOf

from supervisor import RestartType
from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    Context,
    DeadLetterReason,
    DeferredReply,
    Down,
    MailboxConfig,
    MessageSystem,
    OverflowPolicy,
    Priority,
    call,
    cast,
    open_message_system,
)
from terraphim_actors._core.messages import PER_ATTEMPT, Envelope
from terraphim_actors._primitives.mailbox import SEND_BUDGET
from terraphim_actors.errors import (
    AgentNotFound,
    AgentStopped,
    CallFailed,
    CallTimeout,
    CallToSelf,
    InvalidConfig,
    MailboxFull,
)

#: A bounded mailbox of one slot whose senders wait for room.
ONE_BLOCKING_SLOT = MailboxConfig(capacity=1, overflow=OverflowPolicy.BLOCK)


async def spawn_with_full_rejecting_mailbox(
    system: MessageSystem,
) -> tuple[AgentRef, trio.Event]:
    """A ``Runner`` busy until the event is set, its one-slot ``REJECT`` mailbox full."""
    release = trio.Event()
    ref = await system.spawn(
        Runner, mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT)
    )
    await ref.cast(until(release))
    await trio.testing.wait_all_tasks_blocked()
    await ref.cast(lambda ctx: None)
    return ref, release


class TestCallReply:
    async def test_call_returns_the_reply(self, system: MessageSystem) -> None:
        """A call returns what ``handle_call`` returned."""
        ref = await system.spawn(Recorder, [])
        assert await ref.call("hello") == "hello"

    async def test_call_without_reply_raises_call_timeout(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call nobody answers raises ``CallTimeout`` exactly when its timeout passes."""
        ref = await system.spawn(Runner)
        started = trio.current_time()
        with pytest.raises(CallTimeout):
            await ref.call(defer_into([]), timeout=2.5)
        assert trio.current_time() - started == pytest.approx(2.5)

    async def test_call_timeout_is_a_timeout_error(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``CallTimeout`` is caught by ``except TimeoutError``."""
        ref = await system.spawn(Runner)
        with pytest.raises(TimeoutError):
            await ref.call(defer_into([]), timeout=1.0)

    @pytest.mark.parametrize("timeout", [0, 0.0, -1.0, True, float("nan")])
    async def test_invalid_timeout_raises_invalid_config(
        self, system: MessageSystem, timeout: float
    ) -> None:
        """A timeout that is not a positive number of seconds is refused before sending."""
        log: list[tuple[str, Any]] = []
        ref = await system.spawn(Recorder, log)
        with pytest.raises(InvalidConfig):
            await ref.call("never sent", timeout=timeout)
        await trio.testing.wait_all_tasks_blocked()
        assert log == []


class NeverReplies(Agent):
    """Defers every call and never answers it."""

    async def handle_call(self, message: Any, ctx: Context) -> None:
        ctx.defer()


class TestErrorMessagesQuotePayloadsBounded:
    async def test_a_call_timeout_names_a_payload_whose_repr_raises_as_unprintable(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The caller gets its ``CallTimeout``, not the payload's repr error."""
        ref = await system.spawn(NeverReplies)
        with pytest.raises(CallTimeout, match="<unprintable Unprintable>"):
            await ref.call(Unprintable(), timeout=1.0)

    async def test_a_call_timeout_for_a_huge_payload_has_a_short_message(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A 10 MB prompt makes a message of a few hundred characters, not of 10 MB."""
        ref = await system.spawn(NeverReplies)
        with pytest.raises(CallTimeout) as caught:
            await ref.call(HUGE_PROMPT, timeout=1.0)
        assert "'xxx" in str(caught.value)
        assert len(str(caught.value)) < 400

    @pytest.mark.parametrize("error", [ValueError(HUGE_PROMPT), ValueError(Unprintable())])
    async def test_call_failed_quotes_the_handlers_error_bounded(
        self, system: MessageSystem, error: ValueError
    ) -> None:
        """The handler's error is quoted short, or as unprintable; it stays whole as the
        ``__cause__``."""

        def fail(ctx: Context) -> None:
            raise error

        ref = await system.spawn(Runner)
        with pytest.raises(CallFailed) as caught:
            await ref.call(fail)
        assert len(str(caught.value)) < 400
        assert "ValueError" in str(caught.value)
        assert caught.value.__cause__ is error


class TestCallUnderAnOuterScope:
    async def test_a_tighter_trio_scope_cancels_the_call_as_it_would_any_wait(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call inside ``move_on_after`` with a shorter time ends when the scope does: the
        scope catches it, and no CallTimeout escapes it."""
        ref = await system.spawn(Runner)
        started = trio.current_time()
        with trio.move_on_after(1.0) as scope:
            await ref.call(defer_into([]), timeout=10.0)
        assert scope.cancelled_caught
        assert trio.current_time() - started == pytest.approx(1.0)

    async def test_a_call_answered_in_time_leaves_no_timer_behind(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The timer that would end a call's wait is cancelled once the reply comes."""
        ref = await system.spawn(Recorder, [])
        pending = len(system.timers)
        assert await ref.call("hello", timeout=5.0) == "hello"
        assert len(system.timers) == pending


class TestCallFailure:
    async def test_error_in_handle_call_reaches_caller_as_call_failed(
        self, system: MessageSystem
    ) -> None:
        """The caller gets ``CallFailed`` with the handler's error as ``__cause__``."""
        error = ValueError("boom")

        def fail(ctx: Context) -> None:
            raise error

        ref = await system.spawn(Runner)
        with pytest.raises(CallFailed) as raised:
            await ref.call(fail)
        assert raised.value.__cause__ is error

    async def test_call_to_crashing_handler_fails_fast(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The error arrives at once: no time passes, the caller never waits for its timeout."""

        def fail(ctx: Context) -> None:
            raise ValueError("boom")

        ref = await system.spawn(Runner)
        started = trio.current_time()
        with pytest.raises(CallFailed):
            await ref.call(fail, timeout=30.0)
        assert trio.current_time() == started

    async def test_failed_call_is_never_retried(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The handler that raised ran exactly once, however long we wait afterwards."""
        runs: list[None] = []

        def fail(ctx: Context) -> None:
            runs.append(None)
            raise ValueError("boom")

        ref = await system.spawn(Runner)
        with pytest.raises(CallFailed):
            await ref.call(fail)
        await trio.sleep(60)
        assert runs == [None]

    async def test_agent_stops_after_handle_call_raises(self, system: MessageSystem) -> None:
        """A temporary callee crashes: it is no longer alive and no longer registered."""

        def fail(ctx: Context) -> None:
            raise ValueError("boom")

        ref = await system.spawn(Runner, name="fragile", restart=RestartType.TEMPORARY)
        with pytest.raises(CallFailed):
            await ref.call(fail)
        await trio.testing.wait_all_tasks_blocked()
        assert not ref.alive
        assert system.whereis("fragile") is None

    async def test_crash_in_handle_call_is_the_down_reason(self, system: MessageSystem) -> None:
        """A monitor of the callee gets ``Down`` with the handler's error as the reason."""
        error = ValueError("boom")

        def fail(ctx: Context) -> None:
            raise error

        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        ref = await system.spawn(Runner, restart=RestartType.TEMPORARY)
        monitor = await watcher.call(lambda ctx: ctx.monitor(ref))
        with pytest.raises(CallFailed):
            await ref.call(fail)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == [Down(ref, error, monitor)]

    async def test_call_to_crashed_agent_fails_fast(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once the callee has crashed, a new call raises ``AgentStopped`` at once."""

        def fail(ctx: Context) -> None:
            raise ValueError("boom")

        ref = await system.spawn(Runner, restart=RestartType.TEMPORARY)
        with pytest.raises(CallFailed):
            await ref.call(fail)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        with pytest.raises(AgentStopped):
            await ref.call(lambda ctx: "too late")
        assert trio.current_time() == started


class TestCallsTakenWhenTheAgentStops:
    async def test_running_call_fails_when_a_background_task_crashes_the_agent(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose handler is running fails with ``AgentStopped`` the moment it crashes."""
        error = ValueError("linked failure")
        trigger = trio.Event()

        async def fail_on_trigger() -> None:
            await trigger.wait()
            raise error

        ref = await system.spawn(Runner)
        await ref.call(lambda ctx: ctx.start_soon(fail_on_trigger))
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, hold_forever, outcomes)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            trigger.set()
        assert trio.current_time() == started
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        assert stopped.__cause__ is error

    async def test_running_call_fails_when_the_agent_is_killed(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call still running past the shutdown time fails with ``AgentStopped``."""
        ref = await system.spawn(Runner, shutdown=1.0)
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, hold_forever, outcomes)
            await trio.testing.wait_all_tasks_blocked()
            await system.stop(ref)
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)

    async def test_deferred_call_fails_when_the_agent_is_stopped(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A deferred call fails with ``AgentStopped`` as soon as its agent stops."""
        ref = await system.spawn(Runner)
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, defer_into([]), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            await system.stop(ref)
        assert trio.current_time() == started
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        books = system.delivery.get_stats()
        assert (books.acknowledged, books.failed) == (0, 1)

    async def test_deferred_call_fails_when_the_agent_crashes(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A deferred call fails with ``AgentStopped``, the crash as its cause, at once."""
        error = ValueError("boom")

        def fail(ctx: Context) -> None:
            raise error

        ref = await system.spawn(Runner)
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, defer_into([]), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            await ref.cast(fail)
        assert trio.current_time() == started
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        assert stopped.__cause__ is error


class TestQueuedCallsWhenTheAgentStops:
    async def test_queued_call_fails_when_the_agent_crashes_for_good(
        self, system: MessageSystem
    ) -> None:
        """A call waiting in the mailbox of an agent that crashed fails with ``AgentStopped``."""
        release = trio.Event()
        ran: list[str] = []

        async def crash_when_released(ctx: Context) -> None:
            await release.wait()
            raise ValueError("boom")

        ref = await system.spawn(Runner, restart=RestartType.TEMPORARY)
        await ref.cast(crash_when_released)
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, lambda ctx: ran.append("queued"), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == []
            release.set()
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        assert ran == []

    async def test_queued_call_fails_when_the_agent_is_stopped(self, system: MessageSystem) -> None:
        """A call waiting in the mailbox of an agent that is stopped fails, unhandled."""
        release = trio.Event()
        ran: list[str] = []
        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, lambda ctx: ran.append("queued"), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(system.stop, ref)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        assert ran == []

    async def test_queued_call_given_up_on_becomes_a_dead_letter_at_stop(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A queued call whose caller timed out is filed as a dead letter when the agent stops."""
        release = trio.Event()

        def given_up(ctx: Context) -> None:
            raise AssertionError("a call its caller gave up on was handled")

        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        with pytest.raises(CallTimeout):
            await ref.call(given_up, timeout=1.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.stop, ref)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        [letter] = system.dead_letters
        assert letter.envelope.payload is given_up
        assert letter.reason is DeadLetterReason.AGENT_STOPPED


class TestCallToSelf:
    async def test_call_to_self_fails_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent calling its own ref from its handler gets ``CallToSelf``, not a hang."""

        async def call_myself(ctx: Context) -> Any:
            try:
                await ctx.self.call(lambda inner: "unreachable", timeout=10.0)
            except CallToSelf as error:
                return error
            return None

        ref = await system.spawn(Runner)
        started = trio.current_time()
        assert isinstance(await ref.call(call_myself), CallToSelf)
        assert trio.current_time() == started

    async def test_call_from_own_background_task_is_allowed(self, system: MessageSystem) -> None:
        """A background task of the agent may call the agent: its handler is free to answer."""
        replies: list[Any] = []

        async def call_from_background(ctx: Context) -> None:
            replies.append(await ctx.self.call(lambda inner: "pong"))

        ref = await system.spawn(Runner)
        await ref.call(lambda ctx: ctx.start_soon(call_from_background, ctx))
        await trio.testing.wait_all_tasks_blocked()
        assert replies == ["pong"]


@pytest.mark.at_most_once
class TestUnknownRecipient:
    async def test_whereis_unknown_name_is_none(self, system: MessageSystem) -> None:
        """Looking up a name nobody registered gives ``None``."""
        assert system.whereis("nope") is None

    async def test_call_to_unknown_name_raises_agent_not_found(self, system: MessageSystem) -> None:
        """Routing a call to an unknown name raises ``AgentNotFound``."""
        envelope, _reply = call(None, "hello", 1.0, recipient="nope")
        with pytest.raises(AgentNotFound):
            await system.send_message(envelope)

    async def test_agent_not_found_is_a_lookup_error(self, system: MessageSystem) -> None:
        """``AgentNotFound`` is caught by ``except LookupError``."""
        with pytest.raises(LookupError):
            await system.send_message(cast(None, "hello", recipient="nope"))


class TestLateReplies:
    async def test_reply_after_timeout_is_dropped(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Answering a call whose caller gave up reports the reply as dropped."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        with pytest.raises(CallTimeout):
            await ref.call(defer_into(held), timeout=1.0)
        [late] = held
        assert await ref.call(lambda ctx: late.reply("late")) is False

    async def test_late_reply_never_reaches_a_later_call(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The next call gets its own reply, never the one its predecessor gave up on."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        with pytest.raises(CallTimeout):
            await ref.call(defer_into(held), timeout=1.0)

        async def answer_late_then_reply(ctx: Context) -> str:
            await held[0].reply("late")
            return "fresh"

        assert await ref.call(answer_late_then_reply) == "fresh"

    async def test_call_expired_before_the_callee_reached_it_is_not_handled(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose caller gave up while it was queued is skipped, as an EXPIRED dead letter."""
        release = trio.Event()
        ran: list[str] = []

        def expired(ctx: Context) -> None:
            ran.append("expired")

        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        with pytest.raises(CallTimeout):
            await ref.call(expired, timeout=1.0)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == []
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.EXPIRED
        assert letter.envelope.payload is expired
        assert ref.alive


class TestInheritedDeadline:
    async def test_call_inside_handler_ends_at_the_outer_deadline(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An inner call with a longer timeout ends when the outer call's deadline passes
        (by its own ``CallTimeout``, or cancelled with the outer call's abandoned handler)."""
        inner_gave_up_at: list[float] = []
        back = await system.spawn(Runner)

        async def relay(ctx: Context) -> None:
            try:
                await back.call(defer_into([]), timeout=10.0)
            finally:
                inner_gave_up_at.append(trio.current_time())

        front = await system.spawn(Runner)
        started = trio.current_time()
        with pytest.raises(CallTimeout):
            await front.call(relay, timeout=2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert inner_gave_up_at == [pytest.approx(started + 2.0)]

    async def test_call_inside_handler_keeps_its_own_tighter_timeout(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An inner call with a shorter timeout than the outer call keeps its own."""
        back = await system.spawn(Runner)

        async def relay(ctx: Context) -> float:
            started = trio.current_time()
            with pytest.raises(CallTimeout):
                await back.call(defer_into([]), timeout=1.0)
            return trio.current_time() - started

        front = await system.spawn(Runner)
        assert await front.call(relay, timeout=10.0) == pytest.approx(1.0)

    async def test_envelope_carries_the_callers_trio_deadline_when_tighter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call made under a tighter Trio scope tells the callee that deadline."""
        seen: list[float] = []
        ref = await system.spawn(Runner)
        with trio.move_on_after(1.0):
            deadline = trio.current_effective_deadline()
            await ref.call(lambda ctx: seen.append(ctx.deadline), timeout=10.0)
        assert seen == [deadline]


class TestCastAndInfo:
    @pytest.mark.parametrize(
        ("send", "handled_as"),
        [
            (AgentRef.cast, "cast"),
            (AgentRef.cast_nowait, "cast"),
            (AgentRef.info, "info"),
            (AgentRef.info_nowait, "info"),
        ],
    )
    async def test_each_send_reaches_its_handler(
        self, system: MessageSystem, send: Any, handled_as: str
    ) -> None:
        """Casts (blocking or not) reach ``handle_cast``, infos ``handle_info``."""
        log: list[tuple[str, Any]] = []
        ref = await system.spawn(Recorder, log)
        sent = send(ref, "hello")
        if sent is not None:
            await sent
        await trio.testing.wait_all_tasks_blocked()
        assert log == [(handled_as, "hello")]

    @pytest.mark.parametrize("send", [AgentRef.cast, AgentRef.cast_nowait])
    async def test_a_cast_arrives_whole_and_cannot_be_changed(
        self, system: MessageSystem, send: Any
    ) -> None:
        """The envelope a cast reaches its handler in has every field a built one has, on its
        first attempt, and its message refuses a change as any message does."""
        seen: list[Envelope] = []
        ref = await system.spawn(Runner)
        sent = send(ref, lambda ctx: seen.append(ctx.envelope))
        if sent is not None:
            await sent
        await trio.testing.wait_all_tasks_blocked()
        [envelope] = seen
        built = cast(None, "built", recipient=ref.id)
        assert type(envelope) is Envelope
        for name in ("kind", "sender", "recipient", "headers", *PER_ATTEMPT):
            assert getattr(envelope, name) == getattr(built, name), name
        assert envelope.options.priority is Priority.NORMAL
        assert type(envelope.id) is int
        with pytest.raises(AttributeError, match="does not change"):
            envelope.payload = "changed"

    async def test_messages_from_one_sender_arrive_in_order(self, system: MessageSystem) -> None:
        """Casts and infos of one priority from one sender are handled in the order sent."""
        log: list[tuple[str, Any]] = []
        ref = await system.spawn(Recorder, log)
        for number in range(5):
            await ref.cast(number)
            ref.info_nowait(number)
        await trio.testing.wait_all_tasks_blocked()
        assert log == [(kind, number) for number in range(5) for kind in ("cast", "info")]

    async def test_higher_priority_is_handled_first(self, system: MessageSystem) -> None:
        """Messages waiting together are handled highest priority first, FIFO within one."""
        release = trio.Event()
        handled: list[str] = []
        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        for label, priority in [
            ("low", Priority.LOW),
            ("normal 1", Priority.NORMAL),
            ("critical", Priority.CRITICAL),
            ("high", Priority.HIGH),
            ("normal 2", Priority.NORMAL),
        ]:
            await ref.cast(lambda ctx, label=label: handled.append(label), priority=priority)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert handled == ["critical", "high", "normal 1", "normal 2", "low"]

    async def test_call_priority_overtakes_waiting_casts(self, system: MessageSystem) -> None:
        """A high-priority call is answered before normal casts that were waiting."""
        release = trio.Event()
        handled: list[str] = []
        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        await trio.testing.wait_all_tasks_blocked()  # busy with it: the next ones wait
        await ref.cast(lambda ctx: handled.append("cast"))
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            high_priority_call = functools.partial(call_and_keep, priority=Priority.HIGH)
            nursery.start_soon(
                high_priority_call, ref, lambda ctx: handled.append("call"), outcomes
            )
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert handled == ["call", "cast"]


@pytest.mark.at_most_once
class TestBoundedMailbox:
    @pytest.mark.parametrize("send", ["cast", "info"])
    async def test_send_to_full_rejecting_mailbox_raises_mailbox_full(
        self, system: MessageSystem, send: str
    ) -> None:
        """``await ref.cast`` and ``await ref.info`` to a full ``REJECT`` mailbox raise at once."""
        ref, release = await spawn_with_full_rejecting_mailbox(system)
        with pytest.raises(MailboxFull):
            await getattr(ref, send)("one too many")
        release.set()

    @pytest.mark.parametrize("send", ["cast_nowait", "info_nowait"])
    async def test_send_nowait_to_full_mailbox_raises_mailbox_full(
        self, system: MessageSystem, send: str
    ) -> None:
        """``cast_nowait`` and ``info_nowait`` to a full mailbox raise ``MailboxFull``."""
        ref, release = await spawn_with_full_rejecting_mailbox(system)
        with pytest.raises(MailboxFull):
            getattr(ref, send)("one too many")
        release.set()

    async def test_call_to_full_rejecting_mailbox_raises_mailbox_full(
        self, system: MessageSystem
    ) -> None:
        """A call to a full ``REJECT`` mailbox raises ``MailboxFull`` instead of waiting."""
        ref, release = await spawn_with_full_rejecting_mailbox(system)
        with pytest.raises(MailboxFull):
            await ref.call(lambda ctx: None)
        release.set()

    async def test_cast_waits_for_room_in_a_full_blocking_mailbox(
        self, system: MessageSystem
    ) -> None:
        """``await ref.cast`` on a full ``BLOCK`` mailbox waits until the agent takes one."""
        release = trio.Event()
        handled: list[str] = []
        ref = await system.spawn(
            Runner, mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.BLOCK)
        )
        await ref.cast(until(release))
        await trio.testing.wait_all_tasks_blocked()
        await ref.cast(lambda ctx: handled.append("first"))
        sent: list[str] = []

        async def cast_second() -> None:
            await ref.cast(lambda ctx: handled.append("second"))
            sent.append("second")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cast_second)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []
            release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["second"]
        assert handled == ["first", "second"]


def fill_own_mailbox_then(send: Action) -> Action:
    """An action for a ``Runner`` whose mailbox holds one message: it fills its own mailbox,
    then runs ``send`` from its own task and returns what that raised, how long it took, and
    the delivery statistics before and after it."""

    async def fill_then_send(ctx: Context) -> Any:
        ctx.self.cast_nowait(lambda inner: None)
        before = ctx.system.delivery.get_stats()
        started = trio.current_time()
        try:
            await run_action(send, ctx)
        except MailboxFull as error:
            return error, trio.current_time() - started, before, ctx.system.delivery.get_stats()
        return None

    return fill_then_send


class TestSendToOwnFullBlockingMailbox:
    @pytest.mark.parametrize("send", ["cast", "info"])
    async def test_send_to_own_full_blocking_mailbox_raises_mailbox_full_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock, send: str
    ) -> None:
        """``await ctx.self.cast``/``info`` into its own full ``BLOCK`` mailbox would wait for
        room only the agent can make: ``MailboxFull`` at once, saying why."""
        ref = await system.spawn(Runner, mailbox=ONE_BLOCKING_SLOT)
        with trio.fail_after(10):
            error, waited, _, _ = await ref.call(
                fill_own_mailbox_then(lambda ctx: getattr(ctx.self, send)("one too many"))
            )
        assert "cannot wait for room in its own mailbox" in str(error)
        assert waited == 0

    async def test_send_message_to_own_full_blocking_mailbox_raises_mailbox_full_at_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``system.send_message`` to itself, from its own task, is refused at once too."""

        async def send_to_myself(ctx: Context) -> None:
            await ctx.system.send_message(cast(None, "one too many", recipient=ctx.self.id))

        ref = await system.spawn(Runner, mailbox=ONE_BLOCKING_SLOT)
        with trio.fail_after(10):
            error, waited, _, _ = await ref.call(fill_own_mailbox_then(send_to_myself))
        assert isinstance(error, MailboxFull)
        assert waited == 0

    async def test_send_refused_by_own_full_mailbox_is_not_counted(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The refused message was never accepted: the delivery books do not count it."""
        ref = await system.spawn(Runner, mailbox=ONE_BLOCKING_SLOT)
        with trio.fail_after(10):
            _, _, before, after = await ref.call(
                fill_own_mailbox_then(lambda ctx: ctx.self.cast("one too many"))
            )
        assert after.sent == before.sent
        assert after.pending == before.pending

    async def test_agent_refused_by_own_full_mailbox_goes_on_serving(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Nothing is wedged: the agent handles what waits, and other senders get room."""
        handled: list[str] = []
        ref = await system.spawn(Runner, mailbox=ONE_BLOCKING_SLOT)
        with trio.fail_after(10):
            await ref.call(fill_own_mailbox_then(lambda ctx: ctx.self.cast("one too many")))
            await ref.cast(lambda ctx: handled.append("other sender"))
            assert await ref.call(lambda ctx: "still serving") == "still serving"
        assert handled == ["other sender"]

    async def test_background_task_of_the_agent_waits_for_room_in_its_mailbox(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A background task is not the agent's own task: the agent can make room for it, so
        it waits, as any other sender to a ``BLOCK`` mailbox does."""
        full, release = trio.Event(), trio.Event()
        sent: list[str] = []
        handled: list[str] = []

        async def cast_once_full(ctx: Context) -> None:
            await full.wait()
            await ctx.self.cast(lambda inner: handled.append("from background"))
            sent.append("sent")

        ref = await system.spawn(Runner, mailbox=ONE_BLOCKING_SLOT)
        with trio.fail_after(10):
            await ref.call(lambda ctx: ctx.start_soon(cast_once_full, ctx))
            await ref.cast(until(release))
            await trio.testing.wait_all_tasks_blocked()
            await ref.cast(lambda ctx: None)
            full.set()
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []
            release.set()
            await trio.sleep(1)
        assert sent == ["sent"]
        assert handled == ["from background"]


class TestStoppedRecipient:
    async def test_cast_to_stopped_agent_becomes_a_dead_letter(self, system: MessageSystem) -> None:
        """A cast to an agent that stopped is filed as an AGENT_STOPPED dead letter."""
        ref = await system.spawn(Recorder, [])
        await system.stop(ref)
        await ref.cast("too late")
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.AGENT_STOPPED
        assert letter.envelope.payload == "too late"

    async def test_info_to_stopped_agent_becomes_a_dead_letter(self, system: MessageSystem) -> None:
        """An info to an agent that stopped is filed as an AGENT_STOPPED dead letter."""
        ref = await system.spawn(Recorder, [])
        await system.stop(ref)
        ref.info_nowait("too late")
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.AGENT_STOPPED
        assert letter.envelope.payload == "too late"

    async def test_call_to_stopped_agent_raises_agent_stopped(self, system: MessageSystem) -> None:
        """A call to an agent that stopped raises ``AgentStopped`` instead of waiting."""
        ref = await system.spawn(Recorder, [])
        await system.stop(ref)
        with pytest.raises(AgentStopped):
            await ref.call("too late")

    async def test_call_refused_during_shutdown_says_shutdown(self) -> None:
        """A call to an agent stopping for the system's shutdown names that reason."""
        release = trio.Event()
        errors: list[AgentStopped] = []

        async def call_once_shutdown_began(busy: AgentRef) -> None:
            await trio.testing.wait_all_tasks_blocked()
            try:
                await busy.call("late")
            except AgentStopped as error:
                errors.append(error)
            release.set()

        async with trio.open_nursery() as outside, open_message_system() as system:
            busy = await system.spawn(Runner)
            outside.start_soon(busy.call, until(release))
            await trio.testing.wait_all_tasks_blocked()
            outside.start_soon(call_once_shutdown_began, busy)
        assert len(errors) == 1
        assert "(shutdown)" in str(errors[0])


class TestAgentRefIdentity:
    async def test_refs_to_one_agent_are_equal_and_hash_alike(self, system: MessageSystem) -> None:
        """Refs from spawn, ``whereis`` and ``ctx.self`` name one agent: equal, one set entry."""
        ref = await system.spawn(Runner, name="worker")
        own = await ref.call(lambda ctx: ctx.self)
        by_name = system.whereis("worker")
        by_id = system.whereis(ref.id)
        assert ref == own == by_name == by_id
        assert len({ref, own, by_name, by_id}) == 1
        assert {ref: "value"}[own] == "value"

    async def test_copy_of_a_ref_is_equal_to_it(self, system: MessageSystem) -> None:
        """Equality and hashing go by the agent's id, not by the ref object."""
        ref = await system.spawn(Recorder, [])
        duplicate = copy.copy(ref)
        assert duplicate is not ref
        assert duplicate == ref
        assert hash(duplicate) == hash(ref)
        assert {ref: "value"}[duplicate] == "value"

    async def test_refs_to_different_agents_differ(self, system: MessageSystem) -> None:
        """Two agents' refs are not equal, even when spawned from one class and arguments."""
        first = await system.spawn(Recorder, [])
        second = await system.spawn(Recorder, [])
        assert first != second
        assert len({first, second}) == 2

    async def test_ref_is_not_equal_to_its_id(self, system: MessageSystem) -> None:
        """Equality is between refs: a ref is not equal to the bare ``AgentId``."""
        ref = await system.spawn(Recorder, [])
        assert ref != ref.id

    async def test_ref_id_is_an_agent_id(self, system: MessageSystem) -> None:
        """``ref.id`` is the agent's ``AgentId``, carrying its name."""
        ref = await system.spawn(Recorder, [], name="named")
        assert isinstance(ref.id, AgentId)
        assert ref.id.name == "named"

    async def test_ref_name_is_the_spawn_name(self, system: MessageSystem) -> None:
        """``ref.name`` is the name given to ``spawn``, ``None`` without one."""
        named = await system.spawn(Recorder, [], name="named")
        anonymous = await system.spawn(Recorder, [])
        assert named.name == "named"
        assert anonymous.name is None

    async def test_ref_reports_whether_the_agent_is_alive(self, system: MessageSystem) -> None:
        """``ref.alive`` is True while the agent runs and False once it has stopped."""
        ref = await system.spawn(Recorder, [])
        assert ref.alive
        await system.stop(ref)
        assert not ref.alive


class TestRefBadInputAndCheckpoints:
    @pytest.mark.parametrize("priority", [-1, 7, "HIGH", 2])
    async def test_priority_must_be_a_priority(self, system: MessageSystem, priority: Any) -> None:
        """A priority that is not a ``Priority`` (even a valid int) raises ``InvalidConfig``."""
        ref = await system.spawn(Recorder, [])
        with pytest.raises(InvalidConfig):
            await ref.cast("x", priority=priority)

    async def test_cast_refused_by_a_stopped_agent_is_a_cancellation_point(
        self, system: MessageSystem
    ) -> None:
        """A cast that would become a dead letter, made in a cancelled scope, raises
        ``Cancelled`` (Trio's rule for a cancellation point)."""
        ref = await system.spawn(Recorder, [])
        await system.stop(ref)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.cast("too late")
            pytest.fail("the cast was not a cancellation point")

    async def test_a_cast_in_a_cancelled_scope_sends_nothing(self, system: MessageSystem) -> None:
        """A cast that raises ``Cancelled`` has not sent its message."""
        seen: list[Any] = []
        ref = await system.spawn(Recorder, seen)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.cast("never")
        await ref.cast("after")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("cast", "after")]

    @pytest.mark.at_most_once
    async def test_cast_rejected_by_a_full_mailbox_is_a_cancellation_point(
        self, system: MessageSystem
    ) -> None:
        """A cast that a full mailbox would refuse, made in a cancelled scope, raises
        ``Cancelled``, not ``MailboxFull``."""
        ref, release = await spawn_with_full_rejecting_mailbox(system)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.cast("one too many")
        assert scope.cancelled_caught
        release.set()

    @pytest.mark.parametrize("refused", [False, True], ids=["delivered", "refused"])
    async def test_a_sender_that_never_waits_yields_once_per_send_budget(
        self, system: MessageSystem, refused: bool
    ) -> None:
        """Casts that find room, or that an agent stopped for good refuses, complete without
        a scheduler round of their own, but a task casting in a loop still lets the others
        run at least once every ``SEND_BUDGET`` casts (the cooperative budget)."""
        ref = await system.spawn(Recorder, [])
        if refused:
            await system.stop(ref)
        casts = 10 * SEND_BUDGET
        turns = 0

        async def count_turns(done: trio.Event) -> None:
            nonlocal turns
            while not done.is_set():
                await trio.lowlevel.checkpoint()
                turns += 1

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_turns, done)
            for number in range(casts):
                await ref.cast(number)
            done.set()
        assert casts // SEND_BUDGET - 1 <= turns <= casts // SEND_BUDGET + 2

    async def test_a_new_system_gives_its_senders_the_whole_send_budget(
        self, system: MessageSystem
    ) -> None:
        """Where a sender first yields does not depend on what was sent in the thread before
        the system opened: a spawn that need not wait and the first ``SEND_BUDGET - 2``
        casts that find room take no schedule point (they share one budget), and the next
        cast does."""
        ref = await system.spawn(Recorder, [])
        for number in range(SEND_BUDGET // 2):
            await ref.cast(number)
        async with open_message_system() as fresh:
            other = await fresh.spawn(Recorder, [])
            with StepsOf(trio.lowlevel.current_task()) as yields:
                for number in range(SEND_BUDGET - 2):
                    await other.cast(number)
                yields_within_the_budget = yields.count
                await other.cast("the last of the budget")
        assert (yields_within_the_budget, yields.count) == (0, 1)


SECRET = "sk-live-0123456789"


class RedactsAndNeverReplies(NeverReplies):
    """Defers every call, never answers; shows its messages as ``[redacted]``."""

    def format_message(self, payload: Any) -> str:
        return "[redacted]"


class RedactsAndFails(Agent):
    """Fails every call; shows its messages as ``[redacted]``."""

    def format_message(self, payload: Any) -> str:
        return "[redacted]"

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        raise ValueError("refused")


class TestErrorMessagesUseFormatMessage:
    async def test_a_call_timeout_quotes_the_payload_through_format_message(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A redacting ``format_message`` keeps a secret out of the ``CallTimeout``."""
        ref = await system.spawn(RedactsAndNeverReplies)
        with pytest.raises(CallTimeout) as caught:
            await ref.call({"prompt": SECRET}, timeout=1.0)
        assert SECRET not in str(caught.value)
        assert "[redacted]" in str(caught.value)

    async def test_call_failed_quotes_the_payload_through_format_message(
        self, system: MessageSystem, quiet_crash_logs: None
    ) -> None:
        """A redacting ``format_message`` keeps a secret out of the ``CallFailed``, which
        names the call as ``format_message`` shows it."""
        ref = await system.spawn(RedactsAndFails)
        with pytest.raises(CallFailed) as caught:
            await ref.call({"prompt": SECRET})
        assert SECRET not in str(caught.value)
        assert "[redacted]" in str(caught.value)
