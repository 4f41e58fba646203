"""Fault soak: many messages through a pool whose handlers crash 10 % of the time, at least
once; every message must be accounted for, handled or dead-lettered, none lost.

CI runs ``DEFAULT_MESSAGES``; ``TERRAPHIM_SOAK_MESSAGES=1000000 uv run pytest
tests/properties/test_fault_soak.py -s`` runs the full million (about ten times as long). The
summary is printed either way.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    CircuitBreakerConfig,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    MessageKind,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)
from terraphim_actors.testing import FaultInjector

#: Messages in the suite's run; the environment variable asks for more.
DEFAULT_MESSAGES = 100_000
MESSAGES = int(os.environ.get("TERRAPHIM_SOAK_MESSAGES", DEFAULT_MESSAGES))
POOL_SIZE = 4
CRASH_PROBABILITY = 0.10
#: Circuits stay on (their code path runs), but never open: at 10 % crashes, the default five
#: in a row come every ~100,000 runs, and the virtual clock stands still while the producer
#: floods the pool, so an open circuit would not half-open before the flood ends and every
#: message meeting it would expire (the README's 30 s reset against a 30 s message timeout).
#: That measures the breaker, which has tests of its own, not retries under crashes.
LENIENT_BREAKER = CircuitBreakerConfig(failure_threshold=50)
#: Virtual seconds after the last send: past every backoff, circuit reset and message timeout.
SETTLE = 120.0


class Tally(Agent):
    """Counts each completed run of each message number (saturating at 255)."""

    def __init__(self, handled: bytearray) -> None:
        self.handled = handled

    async def handle_cast(self, message: int, ctx: Context) -> None:
        count = self.handled[message]
        if count < 255:
            self.handled[message] = count + 1


@pytest.mark.usefixtures("quiet_crash_logs")
async def test_every_message_through_a_crashing_pool_is_handled_or_dead_lettered(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """At least once, with 10 % of handler runs crashing: 100 % accounted for."""
    started = time.perf_counter()
    handled = bytearray(MESSAGES)
    injector = FaultInjector(seed=2024)
    faulty = injector.wrap_agent(
        Tally, crash_probability=CRASH_PROBABILITY, kinds={MessageKind.CAST}
    )
    config = MessageSystemConfig(
        dead_letter_capacity=MESSAGES,
        delivery=DeliveryConfig(retry_delay=0.1, seed=2024),
        router=RouterConfig(circuit_breaker=LENIENT_BREAKER),
    )
    async with open_message_system(config) as system:
        pool = await system.spawn_pool(
            faulty, handled, size=POOL_SIZE, name="tally", max_restarts=MESSAGES, max_seconds=1.0
        )
        for number in range(MESSAGES):
            await pool.cast(number)
        await trio.sleep(SETTLE)
        delivery = system.delivery.get_stats()
        system_stats = system.get_stats()[0]
        letters = system.dead_letters

    dead = collections.Counter(letter.envelope.payload for letter in letters)
    reasons = collections.Counter(letter.reason for letter in letters)
    outcomes = collections.Counter(
        (handled[number] > 0) + dead[number] for number in range(MESSAGES)
    )
    faults = injector.stats()
    summary = _summary(
        messages=MESSAGES,
        handled=sum(count > 0 for count in handled),
        handled_twice=sum(count > 1 for count in handled),
        dead_letters=sum(dead.values()),
        reasons=reasons,
        crashes=faults.crashes,
        handler_runs=faults.handler_runs,
        delivery=delivery,
        restarts=system_stats.agent_restarts,
        virtual=trio.current_time(),
        wall=time.perf_counter() - started,
    )
    with capsys.disabled():
        print(summary)

    assert outcomes == {1: MESSAGES}, f"not handled or dead-lettered exactly once: {outcomes}"
    assert delivery.sent == MESSAGES
    assert delivery.pending == 0
    assert delivery.acknowledged == sum(handled)
    assert delivery.acknowledged + delivery.dead_lettered == MESSAGES
    assert faults.crashes == system_stats.agent_crashes
    # Each crash was retried, or was the last try of a message and made it a dead letter.
    assert delivery.retried + reasons[DeadLetterReason.RETRIES_EXHAUSTED] == faults.crashes
    assert 0.09 < faults.crashes / faults.handler_runs < 0.11


def _summary(**figures: Any) -> str:
    reasons = ", ".join(
        f"{reason.value}: {count}"
        for reason, count in sorted(figures["reasons"].items(), key=lambda item: item[0].value)
    )
    delivery = figures["delivery"]
    return (
        f"\nfault soak: {figures['messages']:,} casts, pool of {POOL_SIZE}, at least once,"
        f" {CRASH_PROBABILITY:.0%} of handler runs crash\n"
        f"  handler runs {figures['handler_runs']:,}, injected crashes {figures['crashes']:,},"
        f" agent restarts {figures['restarts']:,}, retries {delivery.retried:,}\n"
        f"  handled {figures['handled']:,} (twice: {figures['handled_twice']:,}),"
        f" dead letters {figures['dead_letters']:,} ({reasons or 'none'}),"
        f" accounted for {figures['handled'] + figures['dead_letters']:,}"
        f" of {figures['messages']:,}\n"
        f"  {figures['wall']:.1f} s wall, {figures['virtual']:.1f} s virtual;"
        f" delivery: {delivery}"
    )
