"""Instruments: observers installed with ``MessageSystemConfig(instruments=[...])`` see each
event of a message's and an agent's life, in order, and cost a dict lookup when absent."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentId,
    Context,
    DeadLetter,
    Instrument,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors._core.instruments import HOOKS, Instruments
from terraphim_actors.errors import InvalidConfig, NonRetryable


class Recording(Instrument):
    """Writes down every event as (hook, payload or agent name, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []

    def message_accepted(self, envelope: Any) -> None:
        self.events.append(("message_accepted", envelope.payload, envelope.kind.value))

    def message_delivered(self, envelope: Any) -> None:
        self.events.append(("message_delivered", envelope.payload, envelope.attempt))

    def handler_started(self, agent_id: AgentId, envelope: Any) -> None:
        self.events.append(("handler_started", envelope.payload, agent_id.name))

    def handler_finished(
        self, agent_id: AgentId, envelope: Any, error: BaseException | None
    ) -> None:
        self.events.append(("handler_finished", envelope.payload, type(error).__name__))

    def retry_scheduled(self, envelope: Any, delay: float) -> None:
        self.events.append(("retry_scheduled", envelope.payload, envelope.attempt))

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.events.append(("dead_lettered", letter.envelope.payload, letter.reason.name))

    def agent_started(self, agent_id: AgentId) -> None:
        self.events.append(("agent_started", agent_id.name, None))

    def agent_exited(self, agent_id: AgentId, reason: Any) -> None:
        self.events.append(("agent_exited", agent_id.name, None))

    def about(self, payload: Any) -> list[str]:
        """The hooks called for ``payload``, in order."""
        return [hook for hook, subject, _ in self.events if subject == payload]


class Echo(Agent):
    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        pass

    async def handle_call(self, msg: Any, ctx: Context) -> Any:
        return msg


class CrashesOnce(Agent):
    crashed = False

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        if not CrashesOnce.crashed:
            CrashesOnce.crashed = True
            raise RuntimeError("first try")


class Sleeper(Agent):
    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        await trio.sleep(3600)


class Refuses(Agent):
    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        raise NonRetryable("never")


class TestRegistry:
    def test_only_overridden_hooks_are_keys(self) -> None:
        """An instrument is listed under the hooks it overrides and no others."""

        class StartsOnly(Instrument):
            def agent_started(self, agent_id: Any) -> None:
                pass

        instruments = Instruments([StartsOnly()])
        assert set(instruments) == {"agent_started"}
        assert "handler_started" not in instruments

    def test_an_empty_registry_has_no_hooks(self) -> None:
        """With no instrument, every membership test misses."""
        assert not any(hook in Instruments() for hook in HOOKS)

    def test_removing_the_last_listener_removes_the_hook(self) -> None:
        """A hook nobody listens to costs nothing again."""
        instrument = Recording()
        instruments = Instruments([instrument])
        assert set(instruments) >= {hook for hook in HOOKS if hook in vars(Recording)}
        instruments.remove_instrument(instrument)
        assert not instruments
        with pytest.raises(KeyError):
            instruments.remove_instrument(instrument)

    def test_a_raising_instrument_is_removed_and_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The error is logged, the instrument uninstalled, the others still called."""

        class Broken(Instrument):
            def agent_started(self, agent_id: Any) -> None:
                raise ValueError("broken")

        broken, recording = Broken(), Recording()
        instruments = Instruments([broken, recording])
        with caplog.at_level(logging.ERROR, logger="terraphim_actors.instruments"):
            instruments.call("agent_started", AgentId(name="a"))
        assert "agent_started" in caplog.text
        assert "broken" in caplog.text
        assert recording.events == [("agent_started", "a", None)]
        assert broken not in instruments["agent_started"]

    @pytest.mark.parametrize("instruments", [[object()], ["x"], 42, [Recording, Recording()]])
    def test_config_refuses_anything_but_instruments(self, instruments: Any) -> None:
        """MessageSystemConfig(instruments=...) takes Instrument instances only."""
        with pytest.raises(InvalidConfig, match="instrument"):
            MessageSystemConfig(instruments=instruments)


async def run_with(instrument: Instrument, body: Any, **config: Any) -> None:
    async with open_message_system(MessageSystemConfig(instruments=[instrument], **config)) as s:
        await body(s)


class TestEvents:
    async def test_an_agents_start_and_exit_are_seen(self) -> None:
        """agent_started when its on_start returned, agent_exited when it stopped."""
        recording = Recording()

        async def body(system: Any) -> None:
            await system.spawn(Echo, name="echo")
            assert recording.about("echo") == ["agent_started"]

        await run_with(recording, body)
        assert recording.about("echo") == ["agent_started", "agent_exited"]

    async def test_a_restart_is_an_exit_and_a_start(
        self, autojump_clock: trio.testing.MockClock, quiet_crash_logs: None
    ) -> None:
        """A crashed instance exits and the next one starts."""
        CrashesOnce.crashed = False
        recording = Recording()

        async def body(system: Any) -> None:
            await system.spawn(CrashesOnce, name="flaky")
            await system.whereis("flaky").cast("job")
            await trio.sleep(5)

        await run_with(recording, body)
        assert recording.about("flaky") == [
            "agent_started",
            "agent_exited",
            "agent_started",
            "agent_exited",
        ]

    async def test_a_dead_letter_is_seen(self, quiet_crash_logs: None) -> None:
        """A message given up on is told to dead_lettered with its reason."""
        recording = Recording()

        async def body(system: Any) -> None:
            ref = await system.spawn(Refuses, name="refuses")
            await ref.cast("doomed")
            await trio.testing.wait_all_tasks_blocked()

        await run_with(recording, body)
        assert ("dead_lettered", "doomed", "REJECTED") in recording.events

    async def test_a_cast_is_handled_between_start_and_finish(self) -> None:
        """handler_started, then handler_finished without an error."""
        recording = Recording()

        async def body(system: Any) -> None:
            ref = await system.spawn(Echo, name="echo")
            await ref.cast("hello")
            await trio.testing.wait_all_tasks_blocked()

        await run_with(recording, body)
        # An awaited put is told when it returns, maybe after the recipient began.
        assert [hook for hook in recording.about("hello") if hook != "message_delivered"] == [
            "message_accepted",
            "handler_started",
            "handler_finished",
        ]
        assert recording.about("hello").index("message_delivered") > 0
        assert ("handler_started", "hello", "echo") in recording.events
        assert ("handler_finished", "hello", "NoneType") in recording.events

    async def test_a_handler_cancelled_from_outside_still_finishes(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent stopped mid-handler: its handler_started has its handler_finished, with
        the Cancelled that ended it, so a span opened at the start is always closed."""
        recording = Recording()

        async def body(system: Any) -> None:
            ref = await system.spawn(Sleeper, name="sleeper")
            await ref.cast("long job")
            await trio.sleep(1)
            await system.stop(ref)

        await run_with(recording, body)
        assert [h for h in recording.about("long job") if h.startswith("handler")] == [
            "handler_started",
            "handler_finished",
        ]
        assert ("handler_finished", "long job", "Cancelled") in recording.events

    async def test_a_call_is_handled_between_start_and_finish(self) -> None:
        """A call goes through the same events as a cast."""
        recording = Recording()

        async def body(system: Any) -> None:
            ref = await system.spawn(Echo, name="echo")
            assert await ref.call("question") == "question"

        await run_with(recording, body)
        assert recording.about("question") == [
            "message_accepted",
            "message_delivered",
            "handler_started",
            "handler_finished",
        ]
        assert ("message_accepted", "question", "call") in recording.events
        assert ("handler_finished", "question", "NoneType") in recording.events

    async def test_a_crash_and_its_retry_are_seen_in_order(
        self, autojump_clock: trio.testing.MockClock, quiet_crash_logs: None
    ) -> None:
        """The crash ends the handler with its error; the message is handled again by the
        next instance, which the restart started."""
        CrashesOnce.crashed = False
        recording = Recording()

        async def body(system: Any) -> None:
            await system.spawn(CrashesOnce, name="flaky")
            await system.whereis("flaky").cast("job")
            await trio.sleep(5)

        await run_with(recording, body)
        # A put awaited by its sender is told when the put returns, which may be after the
        # recipient began: the first delivery is left out of the order.
        assert [hook for hook in recording.about("job") if hook != "message_delivered"] == [
            "message_accepted",
            "handler_started",
            "handler_finished",
            "retry_scheduled",
            "handler_started",
            "handler_finished",
        ]
        assert recording.about("job").count("message_delivered") == 2
        assert ("retry_scheduled", "job", 1) in recording.events
        assert [
            (hook, detail)
            for hook, subject, detail in recording.events
            if "_" in hook and subject in ("flaky", "job") and hook.startswith(("agent", "handler"))
        ] == [
            ("agent_started", None),
            ("handler_started", "flaky"),
            ("handler_finished", "RuntimeError"),
            ("agent_exited", None),
            ("agent_started", None),
            ("handler_started", "flaky"),
            ("handler_finished", "NoneType"),
            ("agent_exited", None),
        ]

    async def test_a_rejected_message_finishes_then_is_dead_lettered(
        self, quiet_crash_logs: None
    ) -> None:
        """The handler's error is reported before the dead letter it leads to."""
        recording = Recording()

        async def body(system: Any) -> None:
            ref = await system.spawn(Refuses, name="refuses")
            await ref.cast("doomed")
            await trio.testing.wait_all_tasks_blocked()

        await run_with(recording, body)
        assert [hook for hook in recording.about("doomed") if hook != "message_delivered"] == [
            "message_accepted",
            "handler_started",
            "handler_finished",
            "dead_lettered",
        ]
        assert ("handler_finished", "doomed", "NonRetryable") in recording.events

    async def test_a_raising_instrument_is_removed_and_the_system_goes_on(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer that raises never changes what it observes: it is removed at its
        first error, logged, and the agents go on."""

        class Broken(Instrument):
            def handler_started(self, agent_id: Any, envelope: Any) -> None:
                raise ValueError("broken instrument")

        async def body(system: Any) -> None:
            first = await system.spawn(Echo, name="first")
            second = await system.spawn(Echo, name="second")
            assert await first.call(1) == 1
            assert await second.call(2) == 2

        with caplog.at_level(logging.ERROR, logger="terraphim_actors.instruments"):
            await run_with(Broken(), body)
        assert len([r for r in caplog.records if r.name == "terraphim_actors.instruments"]) == 1
