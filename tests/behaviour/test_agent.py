"""``Agent`` and ``Context``: lifecycle, handlers, deferred replies, monitors and timers."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from agents import (
    HUGE_PROMPT,
    Recorder,
    Runner,
    Silent,
    busy_for,
    call_and_keep,
    defer_into,
    hold_forever,
)
from supervised import Unprintable

from supervisor import RestartType
from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetterReason,
    DeferredReply,
    DeliveryGuarantee,
    Directive,
    Down,
    ExitReason,
    Instrument,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    NotHandled,
    RouterConfig,
    StopReason,
    Timer,
    cast,
    open_message_system,
)
from terraphim_actors._behaviour.agent import format_payload
from terraphim_actors._behaviour.gen_server import _BATCH
from terraphim_actors._core.bounded_repr import REPR_LIMIT, bounded_repr, shorten
from terraphim_actors.errors import (
    AgentStartFailed,
    AgentStopped,
    CallFailed,
    DuplicateAgent,
    HandlerTimeout,
    InvalidConfig,
    ReplyAlreadySent,
    UnhandledMessage,
)


def stats_of(system: MessageSystem, agent_id: AgentId) -> Any:
    """The mailbox statistics of one agent."""
    _, mailboxes = system.get_stats()
    [stats] = [stats for stats in mailboxes if stats.agent_id == agent_id]
    return stats


class GatedStart(Agent):
    """Logs the end of an ``on_start`` that waits for a gate, then every cast it handles."""

    def __init__(self, gate: trio.Event, log: list[str]) -> None:
        self.gate = gate
        self.log = log

    async def on_start(self) -> None:
        await self.gate.wait()
        self.log.append("started")

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append(message)


class FailingStart(Agent):
    """An agent whose ``on_start`` raises the error it was given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def on_start(self) -> None:
        raise self.error


class Picky(Agent):
    """Handles only the string "known"; for anything else it raises ``NotHandled``."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message != "known":
            raise NotHandled(message)
        return "handled"

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message != "known":
            raise NotHandled(message)
        self.log.append(message)


class TestOnStart:
    async def test_on_start_runs_before_the_first_message(self, system: MessageSystem) -> None:
        """A message sent while ``on_start`` is still running waits until it has finished."""
        gate = trio.Event()
        log: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: system.spawn(GatedStart, gate, log, name="gated"), name="spawn"
            )
            await trio.testing.wait_all_tasks_blocked()
            starting = system.whereis("gated")
            assert starting is not None
            await starting.cast("first message")
            await trio.testing.wait_all_tasks_blocked()
            assert log == []
            gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["started", "first message"]

    async def test_spawn_fails_when_on_start_raises(self, system: MessageSystem) -> None:
        """``spawn`` raises ``AgentStartFailed`` with the error of ``on_start`` as its cause."""
        error = RuntimeError("no database")
        with pytest.raises(AgentStartFailed) as raised:
            await system.spawn(FailingStart, error)
        assert raised.value.__cause__ is error

    async def test_spawn_fails_when_the_constructor_raises(self, system: MessageSystem) -> None:
        """Arguments the agent's class does not accept fail the spawn, with the cause."""
        with pytest.raises(AgentStartFailed) as raised:
            await system.spawn(Recorder, [], "one argument too many")
        assert isinstance(raised.value.__cause__, TypeError)

    async def test_name_is_free_again_after_a_failed_start(self, system: MessageSystem) -> None:
        """After a failed start its name is unregistered and can be spawned again."""
        with pytest.raises(AgentStartFailed):
            await system.spawn(FailingStart, RuntimeError("no"), name="service")
        assert system.whereis("service") is None
        ref = await system.spawn(Recorder, [], name="service")
        assert system.whereis("service") == ref

    async def test_name_is_taken_while_on_start_runs(self, system: MessageSystem) -> None:
        """A name is claimed from the start of ``spawn``, so a second one fails at once."""
        gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: system.spawn(GatedStart, gate, [], name="gated"))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(DuplicateAgent):
                await system.spawn(Recorder, [], name="gated")
            gate.set()

    async def test_stop_during_on_start_fails_the_spawn_within_the_shutdown_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent asked to stop while in ``on_start`` is cancelled after its shutdown time."""

        class Slow(Agent):
            async def on_start(self) -> None:
                await trio.sleep_forever()

        failures: list[AgentStartFailed] = []

        async def spawn_slow() -> None:
            try:
                await system.spawn(Slow)
            except AgentStartFailed as failure:
                failures.append(failure)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawn_slow)
            await trio.testing.wait_all_tasks_blocked()
            [ref] = system.agents
            await system.stop(ref)
        assert len(failures) == 1
        assert trio.current_time() - started == pytest.approx(5.0)


class TestOnStartWithContext:
    async def test_on_start_that_takes_ctx_gets_the_agents_context(
        self, system: MessageSystem
    ) -> None:
        """``on_start(self, ctx)`` is given the context: ``ctx.self`` and ``ctx.system``."""
        seen: list[Any] = []

        class Introspective(Agent):
            async def on_start(self, ctx: Context) -> None:
                seen.extend([ctx.self, ctx.system])

        ref = await system.spawn(Introspective)
        assert seen == [ref, system]

    async def test_on_start_without_ctx_still_runs(self, system: MessageSystem) -> None:
        """``on_start(self)`` is called without arguments, as before."""
        started: list[bool] = []

        class Plain(Agent):
            async def on_start(self) -> None:
                started.append(True)

        await system.spawn(Plain)
        assert started == [True]

    async def test_on_start_set_on_the_instance_runs(self, system: MessageSystem) -> None:
        """An ``on_start`` the constructor sets on the instance runs instead of the class's,
        as any attribute of the instance would be found first."""
        started: list[str] = []

        class SetsItsOwn(Agent):
            def __init__(self) -> None:
                self.on_start = self._prepare

            async def _prepare(self) -> None:
                started.append("own")

        await system.spawn(SetsItsOwn)
        assert started == ["own"]

    async def test_timer_set_in_on_start_fires(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A timer set in ``on_start`` delivers its info as one set in a handler does."""
        log: list[tuple[str, Any]] = []

        class Ticking(Recorder):
            async def on_start(self, ctx: Context) -> None:
                ctx.send_after(1.0, "tick")

        await system.spawn(Ticking, log)
        await trio.sleep(2)
        assert log == [("info", "tick")]

    async def test_timer_set_in_on_start_is_cancelled_when_the_instance_stops(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A pending timer set in ``on_start`` never fires once the instance has stopped."""
        log: list[tuple[str, Any]] = []
        other = await system.spawn(Recorder, log)

        class Ticking(Agent):
            async def on_start(self, ctx: Context) -> None:
                ctx.send_after(1.0, "orphan", to=other)

        ref = await system.spawn(Ticking)
        await system.stop(ref)
        await trio.sleep(5)
        assert log == []

    async def test_timer_set_by_a_failing_on_start_never_fires(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An ``on_start`` that sets a timer and then raises leaves no timer behind."""
        log: list[tuple[str, Any]] = []
        other = await system.spawn(Recorder, log)

        class Failing(Agent):
            async def on_start(self, ctx: Context) -> None:
                ctx.send_after(1.0, "orphan", to=other)
                raise RuntimeError("no database")

        with pytest.raises(AgentStartFailed):
            await system.spawn(Failing)
        await trio.sleep(5)
        assert log == []

    async def test_monitor_set_in_on_start_gets_down(self, system: MessageSystem) -> None:
        """A monitor set in ``on_start`` brings a ``Down`` when its target stops."""
        log: list[tuple[str, Any]] = []
        target = await system.spawn(Silent)

        class Watching(Recorder):
            async def on_start(self, ctx: Context) -> None:
                ctx.monitor(target)

        await system.spawn(Watching, log)
        await system.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        [(kind, down)] = log
        assert kind == "info"
        assert isinstance(down, Down)
        assert down.ref == target

    async def test_monitor_set_by_a_failing_on_start_is_removed(
        self, system: MessageSystem
    ) -> None:
        """An ``on_start`` that monitors an agent and then raises leaves no monitor on it."""
        target = await system.spawn(Silent)

        class Failing(Agent):
            async def on_start(self, ctx: Context) -> None:
                ctx.monitor(target)
                raise RuntimeError("no database")

        with pytest.raises(AgentStartFailed):
            await system.spawn(Failing)
        assert target._agent()._watchers == {}


class TestOneMessageAtATime:
    async def test_second_message_waits_for_the_first_handler(self, system: MessageSystem) -> None:
        """While a handler awaits, the agent's next message does not start."""
        release = trio.Event()
        log: list[str] = []

        async def first(ctx: Context) -> None:
            log.append("first begins")
            await release.wait()
            log.append("first ends")

        ref = await system.spawn(Runner)
        await ref.cast(first)
        await ref.cast(lambda ctx: log.append("second"))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["first begins"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["first begins", "first ends", "second"]

    async def test_handlers_never_overlap_under_concurrent_callers(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Many callers at once: at most one handler of the agent runs at any moment."""
        running: list[int] = []
        most_at_once: list[int] = [0]

        async def slow(ctx: Context) -> None:
            running.append(1)
            most_at_once[0] = max(most_at_once[0], len(running))
            await trio.sleep(0.5)
            running.pop()

        ref = await system.spawn(Runner)
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ref.call, slow)
        assert most_at_once == [1]


class HandlersOfItsOwn(Agent):
    """Sets its handlers on the instance when it starts, as a test double or a plugin might."""

    async def on_start(self) -> None:
        self.handle_call = self._answer_call  # type: ignore[method-assign]
        self.handle_cast = self._note_cast  # type: ignore[method-assign]
        self.casts: list[Any] = []

    async def _answer_call(self, message: Any, ctx: Context) -> Any:
        return ("own", message, self.casts)

    async def _note_cast(self, message: Any, ctx: Context) -> None:
        self.casts.append(message)


class TestHandlersLookedUp:
    async def test_handlers_set_on_the_instance_serve_its_messages(
        self, system: MessageSystem
    ) -> None:
        """The loop takes an instance's own handlers over its class's (it looks them up once,
        as the instance begins to serve)."""
        ref = await system.spawn(HandlersOfItsOwn)
        await ref.cast("noted")
        assert await ref.call("asked") == ("own", "asked", ["noted"])


class TestContext:
    async def test_sender_is_the_calling_agents_ref(self, system: MessageSystem) -> None:
        """A message sent from an agent's handler has that agent as ``ctx.sender``."""
        front = await system.spawn(Runner)
        back = await system.spawn(Runner)
        sender = await front.call(lambda ctx: back.call(lambda inner: inner.sender))
        assert sender == front

    async def test_sender_id_is_the_calling_agents_id(self, system: MessageSystem) -> None:
        """``ctx.sender_id`` is the sending agent's ``AgentId``."""
        front = await system.spawn(Runner)
        back = await system.spawn(Runner)
        sender_id = await front.call(lambda ctx: back.call(lambda inner: inner.sender_id))
        assert sender_id == front.id

    async def test_sender_is_none_outside_an_agent(self, system: MessageSystem) -> None:
        """A message sent by plain Trio code has no sender."""
        ref = await system.spawn(Runner)
        assert await ref.call(lambda ctx: (ctx.sender, ctx.sender_id)) == (None, None)

    async def test_sender_without_a_running_agent_has_only_an_id(
        self, system: MessageSystem
    ) -> None:
        """A sender id that names no running agent gives ``ctx.sender`` None, the id kept."""
        seen: list[Any] = []
        outsider = AgentId(name="outsider")
        ref = await system.spawn(Runner)
        envelope = cast(
            outsider, lambda ctx: seen.append((ctx.sender, ctx.sender_id)), recipient=ref.id
        )
        await system.send_message(envelope)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [(None, outsider)]

    async def test_message_id_is_the_envelopes_id(self, system: MessageSystem) -> None:
        """``ctx.message_id`` is the id of the envelope being handled."""
        seen: list[Any] = []
        ref = await system.spawn(Runner)
        envelope = cast(None, lambda ctx: seen.append(ctx.message_id), recipient=ref.id)
        await system.send_message(envelope)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [envelope.id]

    async def test_self_is_the_agents_own_ref(self, system: MessageSystem) -> None:
        """``ctx.self`` is the ref that ``spawn`` returned."""
        ref = await system.spawn(Runner)
        assert await ref.call(lambda ctx: ctx.self) == ref

    async def test_system_is_the_system_it_runs_in(self, system: MessageSystem) -> None:
        """``ctx.system`` is the message system that spawned the agent."""
        ref = await system.spawn(Runner)
        assert await ref.call(lambda ctx: ctx.system) is system

    async def test_deadline_is_the_callers_deadline(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``ctx.deadline`` is the Trio time by which the caller wants its reply."""
        ref = await system.spawn(Runner)
        expected = trio.current_time() + 3.0
        assert await ref.call(lambda ctx: ctx.deadline, timeout=3.0) == pytest.approx(expected)


class TestDeferredReply:
    async def test_deferred_reply_from_a_later_message(self, system: MessageSystem) -> None:
        """A call deferred by one message is answered by a later one."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        replies: list[Any] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, defer_into(held), replies)
            await trio.testing.wait_all_tasks_blocked()
            assert replies == []
            await ref.cast(lambda ctx: held[0].reply("later"))
        assert replies == ["later"]

    async def test_deferred_reply_from_a_background_task(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A background task started with ``ctx.start_soon`` answers the deferred call."""

        def defer_to_background(ctx: Context) -> None:
            handle = ctx.defer()

            async def answer_later() -> None:
                await trio.sleep(1)
                await handle.reply("from the background")

            ctx.start_soon(answer_later)

        ref = await system.spawn(Runner)
        started = trio.current_time()
        assert await ref.call(defer_to_background) == "from the background"
        assert trio.current_time() - started == pytest.approx(1.0)

    async def test_agent_serves_other_messages_while_a_reply_is_deferred(
        self, system: MessageSystem
    ) -> None:
        """While one call waits on a deferred reply, the agent answers other calls."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.call, lambda ctx: held.append(ctx.defer()))
            await trio.testing.wait_all_tasks_blocked()
            assert await ref.call(lambda ctx: "meanwhile") == "meanwhile"
            assert held[0].pending
            await held[0].reply("done")

    async def test_deferred_fail_makes_the_caller_raise_call_failed_from_that_error(
        self, system: MessageSystem
    ) -> None:
        """``handle.fail(error)`` makes the caller's call raise ``CallFailed`` caused by it."""
        held: list[DeferredReply] = []
        error = PermissionError("not yours")
        ref = await system.spawn(Runner)
        outcomes: list[Any] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, defer_into(held), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            assert await held[0].fail(error) is True
        [outcome] = outcomes
        assert isinstance(outcome, CallFailed)
        assert outcome.__cause__ is error
        assert ref.alive

    async def test_deferred_reply_is_no_longer_pending_once_answered(
        self, system: MessageSystem
    ) -> None:
        """``handle.pending`` turns False once the reply is sent."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.call, lambda ctx: held.append(ctx.defer()))
            await trio.testing.wait_all_tasks_blocked()
            assert await held[0].reply("done") is True
            assert not held[0].pending

    async def test_defer_on_a_cast_raises_type_error(self, system: MessageSystem) -> None:
        """Only a call can be deferred: ``ctx.defer()`` in a cast handler raises TypeError."""
        errors: list[BaseException] = []

        def try_to_defer(ctx: Context) -> None:
            try:
                ctx.defer()
            except TypeError as error:
                errors.append(error)

        ref = await system.spawn(Runner)
        await ref.cast(try_to_defer)
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 1
        assert ref.alive

    async def test_deferring_then_raising_fails_the_caller_once(
        self, system: MessageSystem
    ) -> None:
        """A handler that defers and then raises fails its caller with ``CallFailed``."""
        error = ValueError("after deferring")

        def defer_then_fail(ctx: Context) -> None:
            ctx.defer()
            raise error

        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        ref = await system.spawn(Runner, restart=RestartType.TEMPORARY)
        monitor = await watcher.call(lambda ctx: ctx.monitor(ref))
        with pytest.raises(CallFailed) as raised:
            await ref.call(defer_then_fail)
        assert raised.value.__cause__ is error
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == [Down(ref, error, monitor)]

    async def test_stop_after_a_deferred_call_was_answered_directly(
        self, system: MessageSystem
    ) -> None:
        """A deferred call answered through ``ctx.caller`` does not trouble the agent's stop."""
        stops: list[ExitReason] = []

        def defer_and_answer_at_once(ctx: Context) -> None:
            ctx.defer()
            assert ctx.caller is not None
            ctx.caller.reply("direct")

        ref = await system.spawn(Runner, None, stops)
        assert await ref.call(defer_and_answer_at_once) == "direct"
        await system.stop(ref)
        assert stops == [StopReason.NORMAL]

    async def test_answer_through_ctx_caller_replaces_the_return_value(
        self, system: MessageSystem
    ) -> None:
        """A handler that answers ``ctx.caller`` itself keeps running; that answer is the reply."""

        def answer_then_return(ctx: Context) -> str:
            assert ctx.caller is not None
            ctx.caller.reply("answered")
            return "returned"

        ref = await system.spawn(Runner)
        assert await ref.call(answer_then_return) == "answered"
        assert ref.alive
        assert await ref.call(lambda ctx: "next") == "next"

    async def test_deferred_reply_after_the_agent_stopped_returns_false(
        self, system: MessageSystem
    ) -> None:
        """Answering a deferred call whose agent already stopped reaches nobody, quietly."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        outcomes: list[Any] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, defer_into(held), outcomes)
            await trio.testing.wait_all_tasks_blocked()
            await system.stop(ref)
        [stopped] = outcomes
        assert isinstance(stopped, AgentStopped)
        assert await held[0].reply("too late") is False

    async def test_a_deferred_reply_can_be_given_once(self, system: MessageSystem) -> None:
        """A second answer through the same deferred handle raises ``ReplyAlreadySent``."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.call, lambda ctx: held.append(ctx.defer()))
            await trio.testing.wait_all_tasks_blocked()
            assert await held[0].reply(1) is True
        with pytest.raises(ReplyAlreadySent):
            await held[0].reply(2)


class TestDefaultHandlers:
    @pytest.mark.parametrize("send", [AgentRef.cast, AgentRef.info])
    async def test_unhandled_cast_or_info_becomes_a_dead_letter(
        self, system: MessageSystem, send: Any
    ) -> None:
        """A cast or info to an agent without its handler is an UNHANDLED dead letter."""
        ref = await system.spawn(Silent)
        await send(ref, "anyone?")
        await trio.testing.wait_all_tasks_blocked()
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.UNHANDLED
        assert letter.envelope.payload == "anyone?"
        assert ref.alive

    async def test_unhandled_call_raises_unhandled_message(self, system: MessageSystem) -> None:
        """A call to an agent without ``handle_call`` raises ``UnhandledMessage``."""
        ref = await system.spawn(Silent)
        with pytest.raises(UnhandledMessage):
            await ref.call("anyone?")

    async def test_unhandled_call_is_caught_as_call_failed(self, system: MessageSystem) -> None:
        """``UnhandledMessage`` is a ``CallFailed``: ``except CallFailed`` catches it."""
        ref = await system.spawn(Silent)
        with pytest.raises(CallFailed):
            await ref.call("anyone?")

    async def test_unhandled_call_is_a_failed_call_not_a_dead_letter(
        self, system: MessageSystem
    ) -> None:
        """An unhandled call is accounted for by its caller's error: counted as failed."""
        ref = await system.spawn(Silent)
        with pytest.raises(UnhandledMessage):
            await ref.call("anyone?")
        assert system.dead_letters == ()
        assert system.delivery.get_stats().failed == 1

    async def test_agent_keeps_running_after_unhandled_messages(
        self, system: MessageSystem
    ) -> None:
        """After unhandled casts, infos and calls the agent is alive and still answers."""
        log: list[Any] = []
        ref = await system.spawn(Picky, log)
        await ref.info("no handler")
        with pytest.raises(UnhandledMessage):
            await ref.call("no handler")
        assert await ref.call("known") == "handled"
        assert ref.alive

    async def test_not_handled_from_a_cast_handler_is_a_dead_letter(
        self, system: MessageSystem
    ) -> None:
        """A handler raising ``NotHandled`` files the cast as UNHANDLED and keeps running."""
        log: list[Any] = []
        ref = await system.spawn(Picky, log)
        await ref.cast("strange")
        await ref.cast("known")
        await trio.testing.wait_all_tasks_blocked()
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.UNHANDLED
        assert letter.envelope.payload == "strange"
        assert log == ["known"]

    async def test_not_handled_from_a_call_handler_raises_unhandled_message(
        self, system: MessageSystem
    ) -> None:
        """A call handler raising ``NotHandled`` makes the caller raise ``UnhandledMessage``."""
        ref = await system.spawn(Picky, [])
        with pytest.raises(UnhandledMessage):
            await ref.call("strange")
        assert ref.alive
        assert system.delivery.get_stats().failed == 1


class TestMonitors:
    async def test_down_with_normal_reason_when_the_agent_is_stopped(
        self, system: MessageSystem
    ) -> None:
        """``system.stop`` of a monitored agent delivers ``Down(ref, NORMAL, monitor)``."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Recorder, [])
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await system.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == [Down(target, StopReason.NORMAL, monitor)]

    async def test_down_carries_the_crash_error(self, system: MessageSystem) -> None:
        """A monitored agent that crashes delivers ``Down`` with the exception as reason."""
        error = ValueError("boom")

        def fail(ctx: Context) -> None:
            raise error

        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Runner, restart=RestartType.TEMPORARY)
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await target.cast(fail)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == [Down(target, error, monitor)]

    async def test_monitor_of_stopped_agent_is_down_with_noproc_at_once(
        self, system: MessageSystem
    ) -> None:
        """Monitoring an agent that has stopped already gives ``Down`` with NOPROC."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Recorder, [])
        await system.stop(target)
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == [Down(target, StopReason.NOPROC, monitor)]

    async def test_demonitor_prevents_down(self, system: MessageSystem) -> None:
        """After ``ctx.demonitor`` no ``Down`` arrives when the agent stops."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Recorder, [])
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        assert await watcher.call(lambda ctx: ctx.demonitor(monitor)) is True
        await system.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox == []

    async def test_demonitor_twice_returns_false(self, system: MessageSystem) -> None:
        """Removing a monitor that is already gone reports False."""
        watcher = await system.spawn(Runner)
        target = await system.spawn(Recorder, [])
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await watcher.call(lambda ctx: ctx.demonitor(monitor))
        assert await watcher.call(lambda ctx: ctx.demonitor(monitor)) is False

    async def test_each_monitor_gets_its_own_down(self, system: MessageSystem) -> None:
        """Two monitors on one agent each deliver a ``Down`` naming their own monitor."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Recorder, [])
        first = await watcher.call(lambda ctx: ctx.monitor(target))
        second = await watcher.call(lambda ctx: ctx.monitor(target))
        await system.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(inbox, key=lambda down: down.monitor is second) == [
            Down(target, StopReason.NORMAL, first),
            Down(target, StopReason.NORMAL, second),
        ]

    async def test_monitor_of_something_not_a_ref_is_invalid_config(
        self, system: MessageSystem
    ) -> None:
        """``ctx.monitor`` needs an ``AgentRef``; the agent survives the mistake it reports."""
        ref = await system.spawn(Runner)

        def monitor_a_name(ctx: Context) -> str:
            try:
                ctx.monitor("model")  # type: ignore[arg-type]
            except InvalidConfig:
                return "refused"
            return "accepted"

        assert await ref.call(monitor_a_name) == "refused"
        assert ref.alive


class TestTimers:
    async def test_send_after_delivers_an_info_at_its_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``ctx.send_after(delay, payload)`` delivers ``payload`` as an info after ``delay``."""
        arrivals: list[tuple[Any, float]] = []

        class Alarm(Runner):
            async def handle_info(self, message: Any, ctx: Context) -> None:
                arrivals.append((message, trio.current_time()))

        ref = await system.spawn(Alarm)
        started = trio.current_time()
        await ref.call(lambda ctx: ctx.send_after(3.0, "wake up"))
        await trio.sleep(10)
        assert arrivals == [("wake up", pytest.approx(started + 3.0))]

    async def test_send_after_to_another_agent(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``send_after(..., to=ref)`` delivers the info to that agent instead."""
        log: list[tuple[str, Any]] = []
        other = await system.spawn(Recorder, log)
        ref = await system.spawn(Runner)
        await ref.call(lambda ctx: ctx.send_after(1.0, "for you", to=other))
        await trio.sleep(2)
        assert log == [("info", "for you")]

    async def test_cancelled_timer_never_fires(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``timer.cancel()`` before its time means the info is never delivered."""
        inbox: list[Any] = []
        ref = await system.spawn(Runner, inbox)
        timer = await ref.call(lambda ctx: ctx.send_after(1.0, "never"))
        assert timer.cancel() is True
        await trio.sleep(5)
        assert inbox == []
        assert not timer.pending

    async def test_timers_are_cancelled_when_the_agent_stops(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A stopped agent's pending timers never fire, even towards another agent."""
        log: list[tuple[str, Any]] = []
        other = await system.spawn(Recorder, log)
        ref = await system.spawn(Runner)
        timer = await ref.call(lambda ctx: ctx.send_after(1.0, "orphan", to=other))
        await system.stop(ref)
        await trio.sleep(5)
        assert log == []
        assert not timer.pending

    async def test_a_timer_set_again_at_each_message_keeps_one_entry(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The idle-timeout pattern (cancel the timer, set it again, at each message) keeps
        the agent's record of its timers small: a cancelled timer is not kept for ever."""

        class IdleTimeout(Runner):
            timer: Timer | None = None

            async def handle_cast(self, message: Any, ctx: Context) -> None:
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = ctx.send_after(60.0, "idle")

        ref = await system.spawn(IdleTimeout)
        for number in range(1000):
            ref.cast_nowait(number)
        await trio.testing.wait_all_tasks_blocked()
        assert len(ref._agent()._timers) <= 8

    async def test_a_timer_set_in_on_stop_ends_with_the_instance(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An instance's timers die with it, those its ``on_stop`` sets (through the context
        it kept) too: the next instance never gets them."""
        inbox: list[Any] = []

        class SetsATimerAsItStops(Runner):
            async def on_start(self, ctx: Context) -> None:
                self.ctx = ctx

            async def on_stop(self, reason: ExitReason) -> None:
                self.ctx.send_after(1.0, "set in on_stop")

        ref = await system.spawn(SetsATimerAsItStops, inbox)
        with pytest.raises(CallFailed):
            await ref.call(lambda ctx: 1 / 0)  # the instance crashes: another starts
        await trio.sleep(5)
        assert inbox == []
        assert ref.alive


async def cleans_up_when_cancelled(seconds: float, log: list[str]) -> None:
    """A background task that runs until cancelled, then cleans up (shielded) for ``seconds``
    (gives a lease back, flushes a buffer) and says so in ``log``."""
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(seconds)
        log.append("cleaned up")


class TestBackgroundTasks:
    async def test_a_task_that_fails_while_on_start_runs_is_the_start_failure(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Its error is the ``AgentStartFailed``'s cause, as a linked process's reason is
        what OTP's ``start_link`` returns."""
        error = ConnectionError("lost")

        class FailsDuringStart(Agent):
            async def on_start(self, ctx: Context) -> None:
                async def fail_soon() -> None:
                    await trio.sleep(0.1)
                    raise error

                ctx.start_soon(fail_soon)
                await trio.sleep(1.0)

        with pytest.raises(AgentStartFailed) as failed:
            await system.spawn(FailsDuringStart, restart=RestartType.TEMPORARY)
        assert failed.value.__cause__ is error

    async def test_on_stop_runs_once_the_cancelled_tasks_have_cleaned_up(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """As a Trio nursery waits for its children before it exits, an instance's end waits
        for the background tasks it cancels (their cleanup, within the stop's time) before
        ``on_stop`` runs and any next instance starts."""
        log: list[str] = []

        class HoldsALease(Runner):
            async def on_stop(self, reason: ExitReason) -> None:
                log.append("on_stop")

        ref = await system.spawn(HoldsALease)
        await ref.call(lambda ctx: ctx.start_soon(cleans_up_when_cancelled, 1.0, log))
        await system.stop(ref)
        assert log == ["cleaned up", "on_stop"]

    async def test_a_task_slow_to_clean_up_holds_the_stop_no_longer_than_its_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The wait for the cancelled tasks is bounded by the agent's shutdown time."""
        stops: list[ExitReason] = []
        ref = await system.spawn(Runner, None, stops, shutdown=2.0)
        await ref.call(lambda ctx: ctx.start_soon(cleans_up_when_cancelled, 60.0, []))
        began = trio.current_time()
        await system.stop(ref)
        assert trio.current_time() - began <= 2.0
        assert len(stops) == 1

    async def test_background_task_error_crashes_the_agent(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A background task that raises crashes its agent with that error as the reason."""
        error = ConnectionError("lost")

        async def fail_soon() -> None:
            await trio.sleep(1)
            raise error

        inbox: list[Any] = []
        stops: list[ExitReason] = []
        watcher = await system.spawn(Runner, inbox)
        ref = await system.spawn(Runner, None, stops, restart=RestartType.TEMPORARY)
        monitor = await watcher.call(lambda ctx: ctx.monitor(ref))
        await ref.call(lambda ctx: ctx.start_soon(fail_soon))
        await trio.sleep(2)
        assert not ref.alive
        assert stops == [error]
        assert inbox == [Down(ref, error, monitor)]

    async def test_background_task_is_cancelled_when_the_agent_stops(
        self, system: MessageSystem
    ) -> None:
        """Stopping the agent cancels the background tasks it started."""
        cancelled: list[bool] = []

        async def forever() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(True)
                raise

        ref = await system.spawn(Runner)
        await ref.call(lambda ctx: ctx.start_soon(forever))
        await trio.testing.wait_all_tasks_blocked()
        await system.stop(ref)
        await trio.testing.wait_all_tasks_blocked()
        assert cancelled == [True]


class TestStopFromInside:
    async def test_ctx_stop_stops_after_the_current_message(self, system: MessageSystem) -> None:
        """``ctx.stop()`` lets the handler finish and reply, then the agent stops (NORMAL)."""
        stops: list[ExitReason] = []
        ref = await system.spawn(Runner, None, stops, restart=RestartType.TRANSIENT)

        def reply_and_stop(ctx: Context) -> str:
            ctx.stop()
            return "goodbye"

        assert await ref.call(reply_and_stop) == "goodbye"
        await trio.testing.wait_all_tasks_blocked()
        assert not ref.alive
        assert stops == [StopReason.NORMAL]

    async def test_messages_after_ctx_stop_are_not_handled(self, system: MessageSystem) -> None:
        """Messages waiting behind the one that called ``ctx.stop()`` are not handled."""
        release = trio.Event()
        handled: list[str] = []

        async def stop_when_released(ctx: Context) -> None:
            await release.wait()
            ctx.stop()

        ref = await system.spawn(Runner, restart=RestartType.TRANSIENT)
        await ref.cast(stop_when_released)
        await ref.cast(lambda ctx: handled.append("behind"))
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert handled == []
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.AGENT_STOPPED


class TestOnStop:
    async def test_on_stop_gets_normal_from_system_stop(self, system: MessageSystem) -> None:
        """``system.stop`` of an idle agent runs ``on_stop`` with NORMAL."""
        stops: list[ExitReason] = []
        ref = await system.spawn(Runner, None, stops)
        await system.stop(ref)
        assert stops == [StopReason.NORMAL]

    async def test_on_stop_gets_shutdown_when_the_system_exits(self) -> None:
        """Leaving the system's block runs every ``on_stop`` with SHUTDOWN."""
        stops: list[ExitReason] = []
        async with open_message_system() as system:
            await system.spawn(Runner, None, stops)
            await system.spawn(Runner, None, stops)
        assert stops == [StopReason.SHUTDOWN, StopReason.SHUTDOWN]

    async def test_on_stop_gets_killed_after_the_shutdown_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A handler still running at the end of the shutdown time is cancelled: KILLED."""
        stops: list[ExitReason] = []
        config = MessageSystemConfig(shutdown_timeout=2.0)
        async with open_message_system(config) as system:
            ref = await system.spawn(Runner, None, stops)
            await ref.cast(hold_forever)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
        assert stops == [StopReason.KILLED]
        assert trio.current_time() - started == pytest.approx(2.0)

    async def test_on_stop_gets_the_crash_error(self, system: MessageSystem) -> None:
        """An agent whose handler raised runs ``on_stop`` with that exception."""
        error = ValueError("boom")

        def fail(ctx: Context) -> None:
            raise error

        stops: list[ExitReason] = []
        ref = await system.spawn(Runner, None, stops)
        await ref.cast(fail)
        await trio.testing.wait_all_tasks_blocked()
        assert stops == [error]

    async def test_error_in_on_stop_does_not_stop_the_shutdown(self) -> None:
        """An ``on_stop`` that raises is logged; the system still stops its other agents."""

        class Clumsy(Agent):
            async def on_stop(self, reason: ExitReason) -> None:
                raise RuntimeError("clumsy")

        stops: list[ExitReason] = []
        async with open_message_system() as system:
            await system.spawn(Runner, None, stops)
            clumsy = await system.spawn(Clumsy)
        assert not clumsy.alive
        assert stops == [StopReason.SHUTDOWN]

    async def test_call_to_a_stopping_agent_in_on_stop_fails(self, system: MessageSystem) -> None:
        """Once ``on_stop`` runs, the agent takes no new calls: they raise ``AgentStopped``."""
        release = trio.Event()
        outcomes: list[Any] = []

        class SlowStop(Agent):
            async def on_stop(self, reason: ExitReason) -> None:
                await release.wait()

        ref = await system.spawn(SlowStop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.stop, ref)
            await trio.testing.wait_all_tasks_blocked()
            try:
                await ref.call("hello")
            except AgentStopped as error:
                outcomes.append(error)
            release.set()
        assert len(outcomes) == 1


class TestStatistics:
    async def test_processing_time_is_the_time_spent_in_handlers(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``total_processing_time`` adds up the handlers' time on Trio's clock."""
        ref = await system.spawn(Runner)
        await ref.cast(busy_for(2))
        await ref.cast(busy_for(3))
        await trio.sleep(10)
        stats = stats_of(system, ref.id)
        assert stats.messages_processed == 2
        assert stats.total_processing_time == pytest.approx(5.0)
        assert stats.average_processing_time == pytest.approx(2.5)

    async def test_idle_time_is_not_processing_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Time an agent waits for messages does not count as processing time."""
        ref = await system.spawn(Runner)
        await trio.sleep(5)
        await ref.cast(busy_for(1))
        await trio.sleep(5)
        assert stats_of(system, ref.id).total_processing_time == pytest.approx(1.0)

    async def test_an_agent_that_handled_nothing_has_no_activity(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Until its first message, an agent's mailbox shows no last activity and no
        processing time, however long it has been waiting."""
        ref = await system.spawn(Runner)
        await trio.sleep(5)
        stats = stats_of(system, ref.id)
        assert (stats.last_activity, stats.total_processing_time) == (None, 0.0)

    @pytest.mark.parametrize("observed", [False, True], ids=["plain", "instrumented"])
    async def test_a_cast_is_not_activity_until_the_agent_handles_it(
        self, autojump_clock: trio.testing.MockClock, observed: bool
    ) -> None:
        """Last activity is the agent's: an awaited cast stamps nothing, whichever way it
        takes to the mailbox (an instrument that hears of messages makes it take the general
        one); the end of the batch that handled it does."""
        config = MessageSystemConfig(instruments=[HearsOfMessages()] if observed else [])
        async with open_message_system(config) as system:
            ref = await system.spawn(Runner)
            await trio.sleep(5)
            await ref.cast(busy_for(1))
            stamped_by_the_cast = stats_of(system, ref.id).last_activity
            await trio.sleep(5)
            assert (stamped_by_the_cast, stats_of(system, ref.id).last_activity) == (None, 6.0)

    async def test_processing_time_counts_a_whole_batch_that_empties_the_mailbox(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Messages served back to back up to the loop's batch (where it yields to others),
        the last of them emptying the mailbox, all count."""
        ref = await system.spawn(Runner)
        started = trio.current_time()
        for _ in range(_BATCH):
            ref.cast_nowait(busy_for(0.1))
        await trio.sleep(20)
        stats = stats_of(system, ref.id)
        assert stats.messages_processed == _BATCH
        assert stats.total_processing_time == pytest.approx(_BATCH / 10)
        assert stats.last_activity == pytest.approx(started + _BATCH / 10)

    async def test_time_others_take_while_the_agent_yields_is_not_processing_time(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At the yield after each batch, the time other tasks take before the agent runs
        again is theirs: here a task jumping the clock 10 s as the first batch ends."""
        ref = await system.spawn(Runner)
        first_batch_done = trio.Event()

        async def done(ctx: Context) -> None:
            first_batch_done.set()

        async def instant(ctx: Context) -> None:
            pass

        for number in range(2 * _BATCH):
            ref.cast_nowait(done if number == _BATCH - 1 else instant)
        await first_batch_done.wait()
        autojump_clock.jump(10)
        await trio.sleep(1)
        stats = stats_of(system, ref.id)
        assert stats.messages_processed == 2 * _BATCH
        assert stats.total_processing_time == 0.0


class HearsOfMessages(Instrument):
    """Listens to the message hooks, and does nothing with what it hears."""

    def message_accepted(self, envelope: Any) -> None:
        pass


class RefusesEveryCast(Agent):
    """Crashes on every cast, whatever it carries."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise ValueError("refused")


class TestCrashReportsQuotePayloadsBounded:
    @pytest.mark.parametrize("payload", [HUGE_PROMPT, Unprintable()], ids=["10 MB", "unprintable"])
    async def test_a_crash_log_record_stays_small_and_safe(
        self,
        autojump_clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture,
        payload: object,
    ) -> None:
        """Each crash logs one line of a few hundred characters, whatever the payload: a
        10 MB prompt is cut, a payload whose repr raises shows as ``<unprintable ...>``."""
        with caplog.at_level(logging.ERROR, logger="terraphim_actors"):
            async with open_message_system() as system:
                ref = await system.spawn(RefusesEveryCast)
                await ref.cast(payload)
                await trio.sleep(10)  # every retry crashes too
        crashes = [r for r in caplog.records if "crashed handling" in r.getMessage()]
        assert crashes
        for record in crashes:
            assert len(record.getMessage()) < 400
        if isinstance(payload, Unprintable):
            assert "<unprintable Unprintable>" in crashes[0].getMessage()

    @pytest.mark.parametrize(
        "error",
        [RuntimeError(HUGE_PROMPT), RuntimeError(Unprintable())],
        ids=["10 MB", "unprintable"],
    )
    async def test_a_failed_start_quotes_the_error_bounded(
        self, system: MessageSystem, error: RuntimeError
    ) -> None:
        """``AgentStartFailed`` quotes what ``on_start`` raised in a short message; the error
        itself is the cause."""
        with pytest.raises(AgentStartFailed) as raised:
            await system.spawn(FailingStart, error)
        assert len(str(raised.value)) < 400
        assert raised.value.__cause__ is error


class SyncCall(Agent):
    def handle_call(self, message: Any, ctx: Context) -> Any:  # type: ignore[override]
        return message


class CallWithoutCtx(Agent):
    async def handle_call(self, message: Any) -> Any:  # type: ignore[override]
        return message


class OnStartWithTwoArguments(Agent):
    async def on_start(self, ctx: Context, extra: int) -> None:
        pass


class MisspelledCall(Agent):
    async def handle_calls(self, message: Any, ctx: Context) -> Any:
        return message


class MisspelledStart(Agent):
    async def on_stat(self) -> None:
        pass


class SwappedLetters(Agent):
    async def hadnle_info(self, message: Any, ctx: Context) -> None:
        pass


class MethodsThatAreNotHooks(Agent):
    """Public methods far from every hook's name, and private ones near one, are accepted."""

    async def handle_request(self, message: Any) -> None:
        pass

    async def _on_stat(self) -> None:
        pass

    def summary(self) -> str:
        return "fine"


class ReturningCast(Agent):
    async def handle_cast(self, message: Any, ctx: Context) -> None:
        return message  # type: ignore[no-any-return]


class TestClassChecks:
    async def test_sync_handler_fails_the_spawn_naming_it(self, system: MessageSystem) -> None:
        """A handler not defined with ``async def`` is refused at ``spawn``."""
        with pytest.raises(InvalidConfig, match=r"SyncCall\.handle_call must be defined with"):
            await system.spawn(SyncCall)

    async def test_handler_with_wrong_parameters_fails_the_spawn(
        self, system: MessageSystem
    ) -> None:
        """A handler that cannot take ``(message, ctx)`` is refused at ``spawn``."""
        with pytest.raises(InvalidConfig, match=r"CallWithoutCtx\.handle_call.*wrong parameters"):
            await system.spawn(CallWithoutCtx)

    async def test_on_start_with_more_than_ctx_fails_the_spawn(self, system: MessageSystem) -> None:
        """``on_start`` takes ``(self)`` or ``(self, ctx)``, nothing more."""
        with pytest.raises(InvalidConfig, match=r"on_start.*on_start\(self, ctx\)"):
            await system.spawn(OnStartWithTwoArguments)

    async def test_misspelled_hook_fails_the_spawn_naming_it(self, system: MessageSystem) -> None:
        """A method one edit from a hook's name is taken for a misspelling of it."""
        with pytest.raises(InvalidConfig, match=r"MisspelledCall\.handle_calls.*'handle_call'"):
            await system.spawn(MisspelledCall)

    async def test_hook_misspelled_by_a_dropped_letter_fails_the_spawn(
        self, system: MessageSystem
    ) -> None:
        """``on_stat`` is refused as a misspelling of ``on_start``."""
        with pytest.raises(InvalidConfig, match=r"on_stat.*'on_start'"):
            await system.spawn(MisspelledStart)

    async def test_hook_misspelled_by_swapped_letters_fails_the_spawn(
        self, system: MessageSystem
    ) -> None:
        """Two neighbouring letters swapped count as one edit: ``hadnle_info``."""
        with pytest.raises(InvalidConfig, match=r"hadnle_info.*'handle_info'"):
            await system.spawn(SwappedLetters)

    @pytest.mark.parametrize("attribute", ["resume_on", "stop_on", "no_retry_on"])
    @pytest.mark.parametrize(
        "value",
        [(5,), ("ValueError",), (ValueError, int), None, "ValueError"],
        ids=["an-int", "a-name", "a-class-not-an-exception", "none", "a-name-alone"],
    )
    async def test_error_classes_that_are_not_exception_classes_fail_the_spawn(
        self, system: MessageSystem, attribute: str, value: Any
    ) -> None:
        """``resume_on``, ``stop_on`` and ``no_retry_on`` are refused at ``spawn`` unless they
        are exception classes: otherwise ``isinstance`` raises a TypeError only once a handler
        fails, which restarted the agent instead of its decision, or (``no_retry_on``) killed
        its loop outside the handler."""
        bad = type("BadErrors", (Counting,), {attribute: value})
        with pytest.raises(InvalidConfig, match=rf"BadErrors\.{attribute} must be a tuple"):
            await system.spawn(bad)

    @pytest.mark.parametrize("value", [(), (KeyError, ValueError), KeyError])
    async def test_error_classes_may_be_a_tuple_or_one_exception_class(
        self, system: MessageSystem, value: Any
    ) -> None:
        """What ``isinstance`` takes as exception classes passes the check."""
        good = type("GoodErrors", (Counting,), {"resume_on": value, "no_retry_on": value})
        assert (await system.spawn(good)).alive

    async def test_methods_that_are_not_hooks_are_accepted(self, system: MessageSystem) -> None:
        """Names more than two edits from every hook, and private names, pass the checks."""
        ref = await system.spawn(MethodsThatAreNotHooks)
        assert ref.alive

    async def test_spawn_pool_checks_the_class(self, system: MessageSystem) -> None:
        """``spawn_pool`` refuses a class ``spawn`` refuses, before starting any member."""
        with pytest.raises(InvalidConfig, match="handle_calls"):
            await system.spawn_pool(MisspelledCall, size=2)
        assert system.agents == []

    async def test_agent_spec_checks_the_class(self, system: MessageSystem) -> None:
        """``agent_spec`` refuses a class ``spawn`` refuses, when the spec is made."""
        with pytest.raises(InvalidConfig, match=r"SyncCall\.handle_call"):
            system.agent_spec(SyncCall)

    async def test_cast_handler_returning_a_value_warns_once_per_class(
        self, system: MessageSystem, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A value returned by ``handle_cast`` is dropped with one warning for the class."""
        ref = await system.spawn(ReturningCast)
        with caplog.at_level(logging.WARNING, logger="terraphim_actors"):
            for payload in ("first", "second"):
                await ref.cast(payload)
            await trio.testing.wait_all_tasks_blocked()
        warnings = [r for r in caplog.records if "handle_cast returned" in r.getMessage()]
        assert len(warnings) == 1
        assert "ReturningCast" in warnings[0].getMessage()


class ModelError(Exception):
    """An expected failure: the model answered nonsense."""


class Forbidden(Exception):
    """A failure after which the agent must not go on."""


class Counting(Agent):
    """Counts the casts it handled; raises what a cast carries (an exception instance), and
    a call replies with the count. Resumes on ``ModelError``, stops on ``Forbidden``."""

    resume_on = (ModelError,)
    stop_on = (Forbidden,)

    def __init__(self, stops: list[ExitReason] | None = None) -> None:
        self.handled = 0
        self.stops = [] if stops is None else stops

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if isinstance(message, Exception):
            raise message
        self.handled += 1

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return self.handled

    async def on_stop(self, reason: ExitReason) -> None:
        self.stops.append(reason)


class BrokenDecider(Counting):
    """Its ``on_error`` itself raises."""

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        raise RuntimeError("the decider broke")


class Escalates(Counting):
    """Escalates every error."""

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        return Directive.ESCALATE


class TestDirectives:
    def test_the_default_on_error_checks_stop_on_first(self) -> None:
        """An error listed in both ``stop_on`` and ``resume_on`` stops the agent."""

        class Both(Counting):
            resume_on = (ModelError,)
            stop_on = (ModelError,)

        assert Both().on_error(ModelError(), None, None) is Directive.STOP  # type: ignore[arg-type]
        assert Counting().on_error(ValueError(), None, None) is Directive.RESTART  # type: ignore[arg-type]

    async def test_resume_on_keeps_the_state_and_spends_no_restart(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An error in ``resume_on`` leaves the instance and its state; no restart counted."""
        async with open_message_system() as system:
            ref = await system.spawn(Counting)
            await ref.cast("one")
            await ref.cast(ModelError("nonsense"))
            await ref.cast("two")
            assert await ref.call("count") == 2
            assert system.get_stats()[0].agent_restarts == 0

    async def test_the_breaker_counts_a_resume(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Resumed failures open the recipient's circuit breaker as crashes would."""
        breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=10)
        async with open_message_system(
            MessageSystemConfig(router=RouterConfig(circuit_breaker=breaker))
        ) as system:
            ref = await system.spawn(Counting)
            for _ in range(2):
                await ref.cast(ModelError("nonsense"), options=None)
            await trio.testing.wait_all_tasks_blocked()
            breaker = ref._agent().endpoint.admission
            assert breaker is not None
            assert breaker.times_opened == 1

    async def test_stop_on_stops_for_good_and_monitors_get_the_error(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An error in ``stop_on`` stops even a permanent agent for good: ``Down`` carries it
        and ``on_stop`` gets it; nothing restarts it."""
        stops: list[ExitReason] = []
        inbox: list[Any] = []
        forbidden = Forbidden("no")
        async with open_message_system() as system:
            ref = await system.spawn(Counting, stops)
            watcher = await system.spawn(Runner, inbox)
            monitor = await watcher.call(lambda ctx: ctx.monitor(ref))
            await ref.cast(forbidden)
            await trio.sleep(1)
            assert stops == [forbidden]
            assert inbox == [Down(ref, forbidden, monitor)]
            assert not ref.alive
            assert system.whereis(ref.id) is None
            assert system.get_stats()[0].agent_restarts == 0

    async def test_on_error_that_raises_restarts_the_agent(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An ``on_error`` that raises counts as RESTART, and says so in the log."""
        async with open_message_system() as system:
            ref = await system.spawn(BrokenDecider)
            await ref.cast("one")
            await ref.cast(ModelError("nonsense"))
            assert await ref.call("count") == 0
            assert system.get_stats()[0].agent_restarts == 1
        assert "on_error" in caplog.text

    async def test_escalate_in_a_subtree_restarts_the_subtree_through_its_parent(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ESCALATE fails the agent's supervisor at once (restarts to spare); the root then
        restarts that subtree, sibling included."""
        stops: list[ExitReason] = []
        async with open_message_system() as system:
            subtree = await system.start_supervisor(
                [
                    system.agent_spec(Escalates, stops, name="fragile"),
                    system.agent_spec(Counting, name="sibling"),
                ],
                max_restarts=10,
            )
            sibling = system.ref("sibling")
            await sibling.cast("one")
            assert await sibling.call("count") == 1
            at_most_once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
            await system.ref("fragile").cast(ValueError("boom"), options=at_most_once)
            await trio.sleep(1)
            assert await system.ref("sibling").call("count") == 0
            assert system.root.stats().total_restarts == 1
            assert subtree.stats().total_restarts == 0


class FailsThroughCaller(Agent):
    """Answers every call with ``ctx.caller.fail(LookupError)``, then returns normally; or,
    for ``"defer"``, defers and fails the call later through the deferred reply."""

    def __init__(self) -> None:
        self.held: DeferredReply | None = None

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "defer":
            self.held = ctx.defer()
            return None
        if message == "fail held":
            assert self.held is not None
            await self.held.fail(LookupError("later"))
            return "failed it"
        caller = ctx.caller
        assert caller is not None
        caller.fail(LookupError("no such thing"))
        return "ignored"


class TestErrorReplies:
    async def test_ctx_caller_fail_raises_call_failed_in_the_caller(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``ctx.caller.fail(e)`` reaches the caller as ``CallFailed`` caused by ``e``, counted
        as failed in the books, and the agent does not crash."""
        async with open_message_system() as system:
            ref = await system.spawn(FailsThroughCaller)
            with pytest.raises(CallFailed) as raised:
                await ref.call("anything")
            assert isinstance(raised.value.__cause__, LookupError)
            assert system.delivery.get_stats().failed == 1
            assert system.get_stats()[0].agent_restarts == 0
        assert system.delivery.get_stats().pending == 0

    async def test_a_call_failed_given_to_fail_reaches_the_caller_as_it_is(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``fail`` does not wrap a ``CallFailed`` again."""
        failure = CallFailed("already wrapped")

        class FailsWithCallFailed(Agent):
            async def handle_call(self, message: Any, ctx: Context) -> Any:
                assert ctx.caller is not None
                ctx.caller.fail(failure)

        async with open_message_system() as system:
            ref = await system.spawn(FailsWithCallFailed)
            with pytest.raises(CallFailed) as raised:
                await ref.call("anything")
        assert raised.value is failure

    async def test_a_deferred_fail_counts_as_failed_in_the_books(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A deferred call failed later is ``failed``, not acknowledged; the books balance."""
        async with open_message_system() as system:
            ref = await system.spawn(FailsThroughCaller)
            async with trio.open_nursery() as nursery:
                outcomes: list[Any] = []
                nursery.start_soon(call_and_keep, ref, "defer", outcomes)
                await trio.testing.wait_all_tasks_blocked()
                assert await ref.call("fail held") == "failed it"
            [outcome] = outcomes
            assert isinstance(outcome, CallFailed)
            snapshot = system.delivery.get_stats()
            assert (snapshot.failed, snapshot.acknowledged) == (1, 1)
        assert system.delivery.get_stats().pending == 0

    async def test_the_breaker_counts_error_replies(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Calls failed through ``ctx.caller`` open the callee's circuit breaker."""
        breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=10)
        async with open_message_system(
            MessageSystemConfig(router=RouterConfig(circuit_breaker=breaker))
        ) as system:
            ref = await system.spawn(FailsThroughCaller)
            for _ in range(2):
                with pytest.raises(CallFailed):
                    await ref.call("anything")
            breaker = ref._agent().endpoint.admission
            assert breaker is not None
            assert breaker.times_opened == 1


class Slow(Agent):
    """Sleeps as many seconds as a message says, noting how long each run lasted (cancelled
    or not); a call replies ``"done"``, and the call ``"count"`` with the runs completed."""

    def __init__(self, runs: list[float] | None = None) -> None:
        self.completed = 0
        self.runs = [] if runs is None else runs

    async def _sleep(self, seconds: float) -> None:
        started = trio.current_time()
        try:
            await trio.sleep(seconds)
        finally:
            self.runs.append(trio.current_time() - started)
        self.completed += 1

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await self._sleep(message)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "count":
            return self.completed
        await self._sleep(message)
        return "done"


class SlowWithLimit(Slow):
    """Slow, with a one-second limit on its handlers; resumes after a timeout."""

    handler_timeout = 1.0
    resume_on = (HandlerTimeout,)


class TestHandlerTimeout:
    async def test_a_cast_past_its_limit_is_cancelled_at_the_limit_and_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once: each run is cancelled at exactly the limit, the message is retried
        ``max_retries`` times, then dead-lettered naming the HandlerTimeout."""
        runs: list[float] = []
        async with open_message_system() as system:
            ref = await system.spawn(SlowWithLimit, runs)
            await ref.cast(10)
            await trio.sleep(60)
            assert runs == pytest.approx([1.0] * 4)
            [letter] = system.dead_letters
            assert "HandlerTimeout" in letter.detail

    @pytest.mark.at_most_once
    async def test_a_cast_past_its_limit_is_a_dead_letter_at_most_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At most once: cancelled at the limit, never retried, a HANDLER_CRASHED letter."""
        runs: list[float] = []
        ref = await system.spawn(SlowWithLimit, runs)
        await ref.cast(10)
        await trio.sleep(60)
        assert runs == pytest.approx([1.0])
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.HANDLER_CRASHED
        assert "HandlerTimeout" in letter.detail

    async def test_a_call_past_its_limit_fails_with_call_failed_from_handler_timeout(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The caller gets ``CallFailed`` at the limit, caused by ``HandlerTimeout``."""
        ref = await system.spawn(SlowWithLimit)
        started = trio.current_time()
        with pytest.raises(CallFailed) as raised:
            await ref.call(10, timeout=30)
        assert isinstance(raised.value.__cause__, HandlerTimeout)
        assert trio.current_time() - started == pytest.approx(1.0)

    async def test_resume_on_handler_timeout_keeps_the_state_and_spends_no_restart(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``resume_on = (HandlerTimeout,)``: the same instance goes on after a timeout."""
        ref = await system.spawn(SlowWithLimit)
        await ref.cast(0.5)
        with pytest.raises(CallFailed):
            await ref.call(10)
        assert await ref.call("count") == 1
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_handler_timeout_restarts_the_agent_by_default(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Without a directive for it, a HandlerTimeout is a crash: the agent restarts."""
        ref = await system.spawn(Slow, handler_timeout=1.0)
        await ref.cast(0.5)
        with pytest.raises(CallFailed):
            await ref.call(10)
        assert await ref.call("count") == 0
        assert system.get_stats()[0].agent_restarts == 1

    async def test_the_spawn_argument_wins_over_the_class_attribute(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``spawn(..., handler_timeout=5)`` lets a handler of a one-second class run 3 s."""
        ref = await system.spawn(SlowWithLimit, handler_timeout=5.0)
        assert await ref.call(3) == "done"

    async def test_a_handler_within_its_limit_is_unaffected(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A handler that ends before its limit runs to the end and replies."""
        runs: list[float] = []
        ref = await system.spawn(SlowWithLimit, runs)
        assert await ref.call(0.999) == "done"
        assert runs == pytest.approx([0.999])
        assert system.get_stats()[0].agent_restarts == 0

    async def test_pool_members_get_the_pools_limit(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``spawn_pool(..., handler_timeout=...)`` limits every member's handlers."""
        pool = await system.spawn_pool(Slow, size=2, handler_timeout=1.0)
        for _ in range(2):
            with pytest.raises(CallFailed) as raised:
                await pool.call(10)
            assert isinstance(raised.value.__cause__, HandlerTimeout)

    @pytest.mark.parametrize("value", [0, -1.0, "1", True, float("nan")])
    async def test_a_bad_handler_timeout_raises_invalid_config(
        self, system: MessageSystem, value: Any
    ) -> None:
        """``spawn``, ``spawn_pool`` and ``agent_spec`` refuse a limit that is not seconds."""
        with pytest.raises(InvalidConfig, match="handler_timeout"):
            await system.spawn(Slow, handler_timeout=value)
        with pytest.raises(InvalidConfig, match="handler_timeout"):
            await system.spawn_pool(Slow, size=1, handler_timeout=value)
        with pytest.raises(InvalidConfig, match="handler_timeout"):
            system.agent_spec(Slow, handler_timeout=value)

    async def test_a_bad_class_attribute_raises_invalid_config(self, system: MessageSystem) -> None:
        """A class whose ``handler_timeout`` is not seconds cannot be spawned."""

        class BadLimit(Slow):
            handler_timeout = -1.0

        with pytest.raises(InvalidConfig, match="handler_timeout"):
            await system.spawn(BadLimit)


SECRET = "sk-live-0123456789"


class Redacts(Agent):
    """Crashes on every cast; shows its messages as ``[redacted]``."""

    def format_message(self, payload: Any) -> str:
        return "[redacted]"

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise ValueError("refused")


class FormatsBadly(Agent):
    """Crashes on every cast; its ``format_message`` raises."""

    def format_message(self, payload: Any) -> str:
        raise RuntimeError("no format")

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise ValueError("refused")


class FormatsAtLength(Agent):
    """Shows its messages as 10 MB of text."""

    def format_message(self, payload: Any) -> str:
        return HUGE_PROMPT


async def crash_log_of(agent_class: type[Agent], payload: Any, caplog: Any) -> str:
    """The first crash log line of an agent of ``agent_class`` sent ``payload``."""
    with caplog.at_level(logging.ERROR, logger="terraphim_actors"):
        async with open_message_system() as system:
            ref = await system.spawn(agent_class)
            await ref.cast(payload)
            await trio.testing.wait_all_tasks_blocked()
    crashes = [r for r in caplog.records if "crashed handling" in r.getMessage()]
    return crashes[0].getMessage()


class TestFormatMessage:
    async def test_a_redacting_format_message_keeps_a_secret_out_of_the_crash_log(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The crash log line shows the message as the agent's ``format_message`` gives it."""
        line = await crash_log_of(Redacts, {"prompt": SECRET}, caplog)
        assert SECRET not in line
        assert "[redacted]" in line

    async def test_a_raising_format_message_falls_back_to_the_bounded_repr(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A ``format_message`` that raises breaks nothing: the log quotes the bounded repr."""
        line = await crash_log_of(FormatsBadly, "hello", caplog)
        assert "'hello'" in line

    def test_a_non_str_from_format_message_falls_back_to_the_bounded_repr(self) -> None:
        """What is not a ``str`` is not used: the bounded repr is."""

        class ReturnsBytes(Agent):
            def format_message(self, payload: Any) -> str:
                return b"raw"  # type: ignore[return-value]

        assert format_payload(ReturnsBytes(), "hello") == "'hello'"

    def test_what_format_message_returns_is_cut_to_the_bounded_length(self) -> None:
        """A long result of ``format_message`` is cut as the bounded repr would be."""
        assert format_payload(FormatsAtLength(), "hi") == shorten(HUGE_PROMPT, REPR_LIMIT)

    def test_the_default_format_message_is_the_bounded_repr(self) -> None:
        """Without an override, messages show as their bounded repr."""
        assert Agent().format_message(HUGE_PROMPT) == bounded_repr(HUGE_PROMPT)
        assert format_payload(Agent(), HUGE_PROMPT) == bounded_repr(HUGE_PROMPT)
