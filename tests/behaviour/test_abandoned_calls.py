"""A call's handler runs under the call's deadline: once the caller has given up (its
``CallTimeout``, or its own cancel scope), the handler is cancelled, unless the agent sets
``finish_abandoned_calls``."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    CircuitState,
    Context,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)
from terraphim_actors.errors import CallTimeout

#: Two failures in a row open a circuit: one counted twice would open it too.
BREAKER = MessageSystemConfig(
    router=RouterConfig(circuit_breaker=CircuitBreakerConfig(failure_threshold=2))
)


class Model(Agent):
    """Answers ``("think", seconds)`` after that long, and ``"seen"`` with what happened to
    each thought: ``done``, or ``cancelled`` when its handler was cut short."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "seen":
            return self.seen
        _, seconds = message
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.seen.append("cancelled")
            raise
        self.seen.append("done")
        return "thought"


class PatientModel(Model):
    finish_abandoned_calls = True


class Relay(Agent):
    """Passes a call on to another agent and waits for its answer."""

    def __init__(self, to: AgentRef) -> None:
        self.to = to

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return await self.to.call(message, timeout=60)


def circuit(system: MessageSystem, ref: AgentRef) -> CircuitState | None:
    return system.router.stats().circuits.get(ref.id)


async def test_the_handler_is_cancelled_when_the_caller_times_out(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """The hung handler ends with the caller's timeout, and the agent takes its next call
    at once, with its state kept and no restart spent."""
    ref = await system.spawn(Model)
    with pytest.raises(CallTimeout):
        await ref.call(("think", 600), timeout=5)
    assert trio.current_time() == pytest.approx(5)
    assert await ref.call("seen") == ["cancelled"]
    assert trio.current_time() == pytest.approx(5)
    assert system.get_stats()[0].agent_restarts == 0


async def test_an_abandoned_call_is_settled_as_failed(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """The books count it once, as failed, and no dead letter is filed for it."""
    ref = await system.spawn(Model)
    with pytest.raises(CallTimeout):
        await ref.call(("think", 600), timeout=5)
    await ref.call("seen")
    stats = system.delivery.get_stats()
    assert (stats.failed, stats.acknowledged, stats.pending) == (1, 1, 0)
    assert system.dead_letters == ()


async def test_a_caller_cancelled_by_its_own_scope_abandons_the_call(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """``move_on_after`` around a call cancels the handler as a timeout does."""
    ref = await system.spawn(Model)
    with trio.move_on_after(5):
        await ref.call(("think", 600), timeout=60)
    assert await ref.call("seen") == ["cancelled"]
    assert trio.current_time() == pytest.approx(5)


@pytest.mark.parametrize("how", ["timeout", "own scope"])
async def test_the_breaker_counts_an_abandoned_call_once(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """With a threshold of two, one abandoned call leaves the circuit closed; two open it."""
    async with open_message_system(BREAKER) as system:
        ref = await system.spawn(Model)
        for expected in (CircuitState.CLOSED, CircuitState.OPEN):
            if how == "timeout":
                with pytest.raises(CallTimeout):
                    await ref.call(("think", 600), timeout=5)
            else:
                with trio.move_on_after(5):
                    await ref.call(("think", 600), timeout=60)
            await trio.testing.wait_all_tasks_blocked()
            assert circuit(system, ref) is expected


async def test_finish_abandoned_calls_lets_the_handler_run_to_its_end(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """An agent that opts out finishes the call (its answer is dropped); the books count
    the handler's success."""
    ref = await system.spawn(PatientModel)
    with pytest.raises(CallTimeout):
        await ref.call(("think", 60), timeout=5)
    assert await ref.call("seen", timeout=60) == ["done"]
    assert trio.current_time() == pytest.approx(60)
    assert system.delivery.get_stats().acknowledged == 2


async def test_cancelling_a_handler_abandons_the_calls_it_made(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A relay's handler cut short gives up its own call, so the agent it called stops
    working on it too: the whole chain stops at the first caller's deadline."""
    model = await system.spawn(Model)
    relay = await system.spawn(Relay, model)
    with pytest.raises(CallTimeout):
        await relay.call(("think", 600), timeout=5)
    assert await model.call("seen") == ["cancelled"]
    assert trio.current_time() == pytest.approx(5)


async def test_a_call_waiting_behind_the_abandoned_one_is_served_at_once(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Nothing queued behind a hung call waits for it once its caller has given up."""
    ref = await system.spawn(Model)
    answers: list[Any] = []

    async def call(seconds: float, timeout: float) -> None:
        try:
            answers.append(await ref.call(("think", seconds), timeout=timeout))
        except CallTimeout:
            answers.append("timed out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 600, 5)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 1, 60)
    assert answers == ["timed out", "thought"]
    assert trio.current_time() == pytest.approx(6)


async def test_a_call_after_casts_is_served_in_its_turn_and_can_be_cut_short(
    system: MessageSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Casts served before the agent's first call keep their order around it, and that call
    is still cut short when its caller gives up."""

    class Busy(Model):
        async def handle_cast(self, message: Any, ctx: Context) -> None:
            self.seen.append(message)

    ref = await system.spawn(Busy)
    await ref.cast("before")
    with pytest.raises(CallTimeout):
        await ref.call(("think", 600), timeout=5)
    await ref.cast("after")
    assert await ref.call("seen") == ["before", "cancelled", "after"]
    assert trio.current_time() == pytest.approx(5)
