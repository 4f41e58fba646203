"""Agents under supervision: restarts keep the name, the ref and the mailbox; escalation is loud."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from agents import AT_MOST_ONCE, Action, Runner, call_and_keep, run_action, until

from supervisor import (
    InvalidSpec,
    RestartBackoff,
    RestartIntensityExceeded,
    RestartStrategy,
    RestartType,
    Supervisor,
)
from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    Down,
    ExitReason,
    MessageSystem,
    MessageSystemConfig,
    StopReason,
    open_message_system,
)
from terraphim_actors.errors import AgentStartFailed, CallFailed, InvalidConfig


class Tracked(Agent):
    """Logs its starts and stops under its label, keeps a count, and runs actions it is sent."""

    def __init__(self, label: str, log: list[tuple[Any, ...]]) -> None:
        self.label = label
        self.log = log
        self.handled = 0

    async def on_start(self) -> None:
        self.log.append(("start", self.label))

    async def handle_call(self, message: Action | str, ctx: Context) -> Any:
        self.handled += 1
        if message == "handled":
            return self.handled
        assert callable(message)
        return await run_action(message, ctx)

    async def handle_cast(self, message: Action, ctx: Context) -> None:
        self.handled += 1
        await run_action(message, ctx)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.log.append(("info", self.label, message))

    async def on_stop(self, reason: ExitReason) -> None:
        self.log.append(("stop", self.label, reason))


def crash(error: Exception) -> Action:
    def raise_it(ctx: Context) -> None:
        raise error

    return raise_it


def starts(log: list[tuple[Any, ...]]) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "start"]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


class TestRestartedAgent:
    async def test_crashed_permanent_agent_is_restarted_behind_the_same_ref(
        self, system: MessageSystem
    ) -> None:
        """After a crash the same ref and name reach a new instance."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log, name="a")
        await ref.cast(crash(ValueError("boom")))
        await settle()
        assert ref.alive
        assert system.ref("a") is ref
        assert await ref.call("handled") == 1
        assert starts(log) == ["a", "a"]

    async def test_each_restart_builds_a_fresh_instance(self, system: MessageSystem) -> None:
        """State kept on the instance starts over after a restart."""
        ref = await system.spawn(Tracked, "a", [])
        assert await ref.call("handled") == 1
        assert await ref.call("handled") == 2
        await ref.cast(crash(ValueError("boom")))
        assert await ref.call("handled") == 1

    async def test_on_stop_gets_the_crash_reason(self, system: MessageSystem) -> None:
        """The crashed instance's ``on_stop`` receives the exception it crashed with."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log)
        error = ValueError("boom")
        await ref.cast(crash(error))
        await settle()
        assert ("stop", "a", error) in log

    async def test_messages_queued_at_the_crash_wait_for_the_new_instance(
        self, system: MessageSystem
    ) -> None:
        """A cast and a call waiting behind the crashing message are handled after the restart."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log)
        release = trio.Event()

        async def crash_when_released(ctx: Context) -> None:
            await release.wait()
            raise ValueError("boom")

        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            await ref.cast(crash_when_released)
            await ref.cast(lambda ctx: log.append(("queued cast",)))
            nursery.start_soon(call_and_keep, ref, "handled", outcomes)
            await settle()
            release.set()
        assert ("queued cast",) in log
        assert outcomes == [2]  # the new instance handled the cast, then the call

    async def test_crashes_and_restarts_are_counted(self, system: MessageSystem) -> None:
        """``agent_crashes`` and ``agent_restarts`` count each instance that crashed and started."""
        ref = await system.spawn(Tracked, "a", [])
        for _ in range(2):
            await ref.cast(crash(ValueError("boom")))
            await settle()
        stats, _ = system.get_stats()
        assert (stats.agent_crashes, stats.agent_restarts) == (2, 2)

    async def test_crash_in_on_start_of_a_restart_is_retried(self, system: MessageSystem) -> None:
        """A restart whose ``on_start`` raises counts as another crash and is tried again."""
        failures = [ValueError("first restart fails")]

        class FlakyStart(Agent):
            async def on_start(self) -> None:
                if started and failures:
                    raise failures.pop()
                started.append(True)

            async def handle_call(self, message: Any, ctx: Context) -> Any:
                if message == "crash":
                    raise ValueError("boom")
                return "ok"

        started: list[bool] = []
        ref = await system.spawn(FlakyStart)
        with pytest.raises(Exception, match="boom"):
            await ref.call("crash")
        await settle()
        assert await ref.call("ping") == "ok"
        assert system.get_stats()[0].agent_crashes == 2


class TestRestartTypes:
    async def test_transient_agent_is_restarted_after_a_crash(self, system: MessageSystem) -> None:
        """A transient agent that crashes comes back."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log, restart=RestartType.TRANSIENT)
        await ref.cast(crash(ValueError("boom")))
        await settle()
        assert ref.alive
        assert starts(log) == ["a", "a"]

    async def test_transient_agent_that_stops_itself_is_gone_for_good(
        self, system: MessageSystem
    ) -> None:
        """``ctx.stop()`` is a normal exit: final for a transient agent."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log, name="a", restart=RestartType.TRANSIENT)
        await ref.cast(lambda ctx: ctx.stop())
        await settle()
        assert not ref.alive
        assert system.whereis("a") is None
        assert starts(log) == ["a"]
        assert system.root.which_children() == []  # the root keeps no record of it

    async def test_permanent_agent_that_stops_itself_is_started_again(
        self, system: MessageSystem
    ) -> None:
        """As in OTP, a permanent agent is restarted even after a normal exit."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log)
        await ref.cast(lambda ctx: ctx.stop())
        await settle()
        assert ref.alive
        assert starts(log) == ["a", "a"]
        assert ("stop", "a", StopReason.NORMAL) in log

    async def test_temporary_agent_is_not_restarted(self, system: MessageSystem) -> None:
        """A temporary agent that crashes stays down; its name is free again."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log, name="a", restart=RestartType.TEMPORARY)
        await ref.cast(crash(ValueError("boom")))
        await settle()
        assert not ref.alive
        assert system.whereis("a") is None
        assert starts(log) == ["a"]

    async def test_system_stop_of_a_permanent_agent_is_for_good(
        self, system: MessageSystem
    ) -> None:
        """``system.stop`` removes the agent from its supervisor: it is not restarted."""
        log: list[tuple[Any, ...]] = []
        ref = await system.spawn(Tracked, "a", log, name="a")
        await system.stop(ref)
        await settle()
        assert not ref.alive
        assert system.whereis("a") is None
        assert starts(log) == ["a"]
        assert system.root.which_children() == []

    async def test_monitor_sees_no_down_for_a_restart_only_for_the_final_stop(
        self, system: MessageSystem
    ) -> None:
        """The ref outlives restarts, so ``Down`` comes only when the agent stops for good."""
        log: list[tuple[Any, ...]] = []
        watcher = await system.spawn(Tracked, "watcher", log)
        target = await system.spawn(Tracked, "target", [])
        monitor = await watcher.call(lambda ctx: ctx.monitor(target))
        await target.cast(crash(ValueError("boom")))
        await settle()
        assert [entry for entry in log if entry[0] == "info"] == []
        await system.stop(target)
        await settle()
        assert ("info", "watcher", Down(target, StopReason.NORMAL, monitor)) in log


class TestIntensity:
    async def test_too_many_crashes_end_the_system_with_the_error(self) -> None:
        """Above ``max_restarts`` the root gives up and the block raises, with the last crash."""
        last = ValueError("third")

        async def crash_three_times() -> None:
            config = MessageSystemConfig(max_restarts=2, max_seconds=60.0)
            async with open_message_system(config) as system:
                ref = await system.spawn(Tracked, "a", [])
                for error in (ValueError("first"), ValueError("second"), last):
                    await ref.cast(crash(error))
                    await settle()
                await trio.sleep_forever()  # the escalation cancels the block

        with pytest.raises(RestartIntensityExceeded) as raised:
            await crash_three_times()
        assert raised.value.last_failure is last

    async def test_escalation_stops_every_agent(self) -> None:
        """When the root gives up, every agent has run ``on_stop`` and is gone."""
        log: list[tuple[Any, ...]] = []
        refs: list[AgentRef] = []

        async def crash_once() -> None:
            async with open_message_system(MessageSystemConfig(max_restarts=0)) as system:
                refs.append(await system.spawn(Tracked, "bystander", log))
                refs.append(await system.spawn(Tracked, "fragile", log))
                await refs[1].cast(crash(ValueError("boom")))
                await trio.sleep_forever()

        with pytest.raises(RestartIntensityExceeded):
            await crash_once()
        assert ("stop", "bystander", StopReason.SHUTDOWN) in log
        assert not any(ref.alive for ref in refs)

    async def test_crashes_spread_over_time_never_end_the_system(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Old restarts leave the window: a crash a minute for ten minutes is fine."""
        config = attrs.evolve(AT_MOST_ONCE, max_restarts=1)  # each crash once, not retried
        async with open_message_system(config) as system:
            ref = await system.spawn(Tracked, "a", [])
            for _ in range(10):
                await ref.cast(crash(ValueError("boom")))
                await trio.sleep(61)
            assert await ref.call("handled") == 1

    @pytest.mark.parametrize(
        "options", [{"max_restarts": -1}, {"max_seconds": 0}, {"restart_backoff": 1.0}]
    )
    def test_bad_intensity_is_invalid_config(self, options: dict[str, Any]) -> None:
        """Negative restarts, a zero window or a backoff of the wrong type are refused."""
        with pytest.raises(InvalidConfig):
            MessageSystemConfig(**options)


class TestBackoff:
    async def test_restart_waits_for_the_backoff_and_queued_calls_wait_too(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With a backoff the restart comes later; a call made meanwhile is answered then."""
        backoff = RestartBackoff(initial=2.0, jitter=0)
        async with open_message_system(MessageSystemConfig(restart_backoff=backoff)) as system:
            ref = await system.spawn(Tracked, "a", [])
            await ref.cast(crash(ValueError("boom")))
            crashed_at = trio.current_time()
            assert await ref.call("handled", timeout=10.0) == 1
            assert trio.current_time() - crashed_at == pytest.approx(2.0)


class TestSubtrees:
    async def test_start_supervisor_starts_agents_in_order(self, system: MessageSystem) -> None:
        """The subtree's agents start in list order and can be found by name."""
        log: list[tuple[Any, ...]] = []
        labels = ["first", "second", "third"]
        await system.start_supervisor(
            [system.agent_spec(Tracked, label, log, name=label) for label in labels]
        )
        assert starts(log) == labels
        assert all(system.whereis(label) is not None for label in labels)

    async def test_one_for_all_subtree_restarts_every_agent(self, system: MessageSystem) -> None:
        """One crash restarts all the subtree's agents: stopped newest first, started in order."""
        log: list[tuple[Any, ...]] = []
        labels = ["first", "second", "third"]
        await system.start_supervisor(
            [system.agent_spec(Tracked, label, log, name=label) for label in labels],
            strategy=RestartStrategy.ONE_FOR_ALL,
        )
        log.clear()
        await system.ref("second").cast(crash(ValueError("boom")))
        await settle()
        assert [entry[:2] for entry in log] == [
            ("stop", "second"),
            ("stop", "third"),
            ("stop", "first"),
            ("start", "first"),
            ("start", "second"),
            ("start", "third"),
        ]

    async def test_rest_for_one_subtree_restarts_the_later_agents(
        self, system: MessageSystem
    ) -> None:
        """A crash restarts that agent and those started after it, not those before."""
        log: list[tuple[Any, ...]] = []
        labels = ["first", "second", "third"]
        await system.start_supervisor(
            [system.agent_spec(Tracked, label, log, name=label) for label in labels],
            strategy=RestartStrategy.REST_FOR_ONE,
        )
        log.clear()
        await system.ref("second").cast(crash(ValueError("boom")))
        await settle()
        assert starts(log) == ["second", "third"]

    async def test_refs_survive_a_restart_of_the_whole_subtree(self, system: MessageSystem) -> None:
        """A subtree that gives up is restarted by the root; its agents keep their refs."""
        log: list[tuple[Any, ...]] = []
        await system.start_supervisor(
            [system.agent_spec(Tracked, "worker", log, name="worker")], max_restarts=0
        )
        worker = system.ref("worker")
        await worker.cast(crash(ValueError("boom")))
        await settle()
        assert system.ref("worker") is worker
        assert await worker.call("handled") == 1
        assert system.root.stats().total_restarts == 1

    async def test_nested_supervisors_form_a_tree(self, system: MessageSystem) -> None:
        """A supervisor inside a subtree runs its own agents; ``which_children`` shows the tree."""
        log: list[tuple[Any, ...]] = []
        inner = Supervisor([system.agent_spec(Tracked, "leaf", log, name="leaf")], name="inner")
        subtree = await system.start_supervisor(
            [system.agent_spec(Tracked, "branch", log, name="branch"), inner.as_child("inner")],
            name="outer",
        )
        assert starts(log) == ["branch", "leaf"]
        assert [child.id for child in subtree.which_children()][1] == "inner"
        assert inner.which_children()[0].value is system.ref("leaf")

    @pytest.mark.parametrize("children", [5, None], ids=["int", "None"])
    async def test_children_not_a_list_raise_invalid_spec(
        self, system: MessageSystem, children: Any
    ) -> None:
        """As documented for a bad child spec: not the TypeError of iterating them."""
        with pytest.raises(InvalidSpec, match="children"):
            await system.start_supervisor(children)
        assert system.agents == []

    async def test_subtree_whose_agent_fails_to_start_raises(self, system: MessageSystem) -> None:
        """``start_supervisor`` raises ``AgentStartFailed`` when a child cannot start."""

        class Broken(Agent):
            async def on_start(self) -> None:
                raise ValueError("no")

        with pytest.raises(AgentStartFailed):
            await system.start_supervisor([system.agent_spec(Broken)])

    async def test_failed_subtree_frees_the_names_of_agents_it_had_started(
        self, system: MessageSystem
    ) -> None:
        """Agents started before the one that failed are stopped for good, names freed."""

        class Broken(Agent):
            async def on_start(self) -> None:
                raise ValueError("no")

        inner = Supervisor([system.agent_spec(Tracked, "leaf", [], name="leaf")])
        with pytest.raises(AgentStartFailed):
            await system.start_supervisor(
                [
                    system.agent_spec(Tracked, "first", [], name="first"),
                    inner.as_child("inner"),
                    system.agent_spec(Broken),
                ]
            )
        assert system.whereis("first") is None
        assert system.whereis("leaf") is None
        assert system.agents == []

    async def test_agent_in_a_subtree_is_stopped_for_good_by_system_stop(
        self, system: MessageSystem
    ) -> None:
        """``system.stop`` works for agents anywhere in the tree."""
        log: list[tuple[Any, ...]] = []
        subtree = await system.start_supervisor(
            [system.agent_spec(Tracked, "leaf", log, name="leaf")]
        )
        await system.stop(system.ref("leaf"))
        assert system.whereis("leaf") is None
        assert subtree.which_children() == []


class TestQueuedCallDuringRestart:
    async def test_call_waiting_on_a_busy_agent_is_answered_by_the_next_instance(
        self, system: MessageSystem
    ) -> None:
        """A call queued behind a handler that crashes is not failed: the restart answers it."""
        ref = await system.spawn(Tracked, "a", [])
        release = trio.Event()
        outcomes: list[Any] = []

        async def crash_when_released(ctx: Context) -> None:
            await until(release)(ctx)
            raise ValueError("boom")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_and_keep, ref, crash_when_released, [])
            await settle()
            nursery.start_soon(call_and_keep, ref, "handled", outcomes)
            await settle()
            release.set()
        assert outcomes == [1]


class Busy(Agent):
    """A cast keeps it busy for a second; a call answers "ok"."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message == "crash":
            raise RuntimeError("boom")
        await trio.sleep(1)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "crash":
            raise RuntimeError("boom")
        return "ok"


class HangsOnRestart(Agent):
    """Starts once; every restart hangs in ``on_start``."""

    def __init__(self, starts: list[float]) -> None:
        self.starts = starts

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())
        if len(self.starts) > 1:
            await trio.sleep_forever()

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise RuntimeError("boom")


class TestRacesWithTheSupervisor:
    """Found in review: each sequence once lost a ref, leaked a name, or hung."""

    async def test_a_crash_just_before_the_shutdown_is_no_error_of_the_shutdown(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A handler crashes and the block ends at once, before the root supervisor has
        handled the exit: the shutdown finds the agent ended, and that is an exit like any,
        not an error raised while stopping (no ERROR line, no ``stop_errors``)."""

        def crash(ctx: Context) -> None:
            raise ZeroDivisionError("one over zero")

        async with open_message_system() as system:
            tool = await system.spawn(Runner)
            with pytest.raises(CallFailed):
                await tool.call(crash)
        assert system.root.stats().stop_errors == 0
        assert not [r for r in caplog.records if "raised while stopping" in r.getMessage()]

    async def test_transient_sibling_keeps_its_ref_and_queue_through_a_group_restart(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Stopped by its supervisor (not by itself), a transient agent is restarted intact."""
        await system.start_supervisor(
            [
                system.agent_spec(Busy, name="a"),
                system.agent_spec(Busy, name="b", restart=RestartType.TRANSIENT),
            ],
            strategy=RestartStrategy.ONE_FOR_ALL,
        )
        b = system.ref("b")
        await b.cast("busy")
        await b.cast("queued")
        await system.ref("a").cast("crash")
        await trio.sleep(5)
        assert system.ref("b") is b
        assert await b.call("hi") == "ok"
        assert [letter.envelope.payload for letter in system.dead_letters] == ["crash"]

    async def test_subtree_that_ends_for_good_stops_its_agents_for_good(
        self, system: MessageSystem
    ) -> None:
        """A temporary subtree that gives up frees its agents' names; calls fail at once."""
        await system.start_supervisor(
            [system.agent_spec(Busy, name="e")], max_restarts=0, restart=RestartType.TEMPORARY
        )
        ref = system.ref("e")
        with pytest.raises(Exception, match="boom"):
            await ref.call("crash")
        await settle()
        assert system.whereis("e") is None
        assert not ref.alive
        await system.spawn(Busy, name="e")  # the name is free again

    async def test_cancelled_spawn_leaves_no_agent_behind(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A spawn cancelled during ``on_start`` frees the name and the root's record."""
        with trio.move_on_after(1):
            await system.spawn(HangsOnRestart, [0.0], name="slow")
        assert system.whereis("slow") is None
        assert system.root.which_children() == []

    async def test_spawn_from_on_start_fails_instead_of_deadlocking(
        self, system: MessageSystem
    ) -> None:
        """An agent cannot add a sibling to the root while the root is starting it."""

        class Parent(Agent):
            async def on_start(self) -> None:
                await self_system.spawn(Busy)

        self_system = system
        with pytest.raises(AgentStartFailed, match="while starting"):
            await system.spawn(Parent)
        assert await (await system.spawn(Busy)).call("still serving") == "ok"

    async def test_spawn_from_on_start_in_a_subtree_fails_instead_of_deadlocking(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent in a subtree the root is starting cannot add a sibling to the root either:
        the root is waiting for that subtree, several levels up."""

        class Parent(Agent):
            async def on_start(self) -> None:
                await self_system.spawn(Busy)

        self_system = system
        with trio.fail_after(10), pytest.raises(AgentStartFailed) as caught:
            await system.start_supervisor([system.agent_spec(Parent, name="parent")])
        # Each level quotes the one below through a bounded repr: the reason is in the causes.
        causes = []
        error: BaseException | None = caught.value
        while error is not None:
            causes.append(str(error))
            error = error.__cause__
        assert any("while starting" in cause for cause in causes), causes
        assert await (await system.spawn(Busy)).call("still serving") == "ok"

    async def test_system_stop_during_a_group_restart_stops_the_agent_for_good(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``system.stop`` waits for the restart in progress, then stops the agent for good."""
        await system.start_supervisor(
            [system.agent_spec(Busy, name="a"), system.agent_spec(Busy, name="b")],
            strategy=RestartStrategy.ONE_FOR_ALL,
        )
        b = system.ref("b")
        await b.cast("busy")
        await settle()
        await system.ref("a").cast("crash")
        await settle()
        await system.stop(b)
        await trio.sleep(5)
        assert system.whereis("b") is None
        assert not b.alive

    async def test_leaving_the_block_during_a_hanging_restart_ends_in_the_shutdown_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent whose restart hangs in ``on_start`` is cancelled after its shutdown time."""
        starts: list[float] = []
        config = MessageSystemConfig(shutdown_timeout=2.0)
        async with open_message_system(config) as system:
            await system.start_supervisor(
                [
                    system.agent_spec(HangsOnRestart, starts, name="a"),
                    system.agent_spec(Busy, name="b"),
                ],
                strategy=RestartStrategy.ONE_FOR_ALL,
            )
            await system.ref("a").cast("crash")
            await settle()
            left_at = trio.current_time()
        assert len(starts) == 2
        assert trio.current_time() - left_at == pytest.approx(2.0)


class Worker(Agent):
    async def handle_call(self, msg: Any, ctx: Any) -> Any:
        return msg


class SpawnsOnRequest(Agent):
    """Spawns a worker under the root when asked: from a handler, once it has started."""

    async def handle_call(self, msg: Any, ctx: Any) -> Any:
        worker = await ctx.system.spawn(Worker)
        return await worker.call("spawned")


class SlowToStart(Agent):
    async def on_start(self) -> None:
        await trio.sleep(1)


class TestSpawnUnderTheRootFromASubtreeStillStarting:
    async def test_an_agent_already_started_in_a_subtree_still_starting_can_spawn_under_the_root(
        self,
        autojump_clock: trio.abc.Clock,
    ) -> None:
        """Only a caller that the start waits for (the child being started, in ``on_start``)
        would deadlock. A sibling that has finished starting handles messages; its spawn just waits
        for the root until the subtree has started. The rewrite's walk up the tree refuses it with
        ``SupervisorError`` (to its caller: ``CallFailed``), depending on timing alone."""
        async with open_message_system() as system, trio.open_nursery() as nursery:
            nursery.start_soon(
                system.start_supervisor,
                [
                    system.agent_spec(SpawnsOnRequest, name="spawner"),
                    system.agent_spec(SlowToStart),
                ],
            )
            await trio.testing.wait_all_tasks_blocked()  # spawner running, SlowToStart in on_start
            assert await system.ref("spawner").call("spawn", timeout=5.0) == "spawned"
