"""``TracingInstrument``'s metrics, read with the SDK's in-memory metric reader: mailbox depths,
the delivery books and restarts, as the system counts them at the moment of reading."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from terraphim_actors import Agent, Context, MessageSystemConfig, RateLimit, open_message_system
from terraphim_actors.errors import NonRetryable
from terraphim_actors.otel import TracingInstrument


class Metrics:
    """An SDK meter provider read on demand."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def read(self) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
        """Every metric's points, by name, then by their attributes."""
        read: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    read[metric.name] = {
                        tuple(sorted((point.attributes or {}).items())): point
                        for point in metric.data.data_points
                    }
        return read

    def value(self, name: str, **attributes: Any) -> Any:
        return self.read()[name][tuple(sorted(attributes.items()))].value


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics()
    yield metrics
    metrics.provider.shutdown()


def config(metrics: Metrics) -> MessageSystemConfig:
    return MessageSystemConfig(instruments=[TracingInstrument(meter_provider=metrics.provider)])


class Busy(Agent):
    """Holds its first message until ``release`` is set."""

    def __init__(self, release: trio.Event) -> None:
        self.release = release

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        await self.release.wait()


class CrashesFirst(Agent):
    def __init__(self, crashed: list[bool]) -> None:
        self.crashed = crashed

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        if not self.crashed:
            self.crashed.append(True)
            raise RuntimeError("first try")


async def test_mailbox_depth_is_what_waits_in_each_mailbox(metrics: Metrics) -> None:
    """An agent busy with one message and three waiting: its depth is 3; once done, 0."""
    release = trio.Event()
    async with open_message_system(config(metrics)) as system:
        ref = await system.spawn(Busy, release, name="busy")
        for number in range(4):
            await ref.cast(number)
        await trio.testing.wait_all_tasks_blocked()
        assert metrics.value("terraphim.mailbox.depth", **{"terraphim.agent": "busy"}) == 3
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert metrics.value("terraphim.mailbox.depth", **{"terraphim.agent": "busy"}) == 0


async def test_the_delivery_counts_are_the_books(metrics: Metrics, quiet_crash_logs: None) -> None:
    """Five casts handled and one refused (a dead letter): the counters say what the delivery
    books say."""

    class Picky(Agent):
        async def handle_cast(self, msg: Any, ctx: Context) -> None:
            if msg == "unwanted":
                raise NonRetryable("refused")

    async with open_message_system(config(metrics)) as system:
        ref = await system.spawn(Picky, name="picky")
        for number in range(5):
            await ref.cast(number)
        await ref.cast("unwanted")
        await trio.testing.wait_all_tasks_blocked()
        books = system.delivery.get_stats()
        read = {
            name: metrics.value(f"terraphim.messages.{name}")
            for name in ("sent", "delivered", "acknowledged", "dead_lettered", "pending")
        }
    assert read == {"sent": 6, "delivered": 6, "acknowledged": 5, "dead_lettered": 1, "pending": 0}
    assert read == {name: getattr(books, name) for name in read}


async def test_restarts_and_crashes_are_counted(
    metrics: Metrics, autojump_clock: trio.testing.MockClock, quiet_crash_logs: None
) -> None:
    """An agent that crashes once is restarted once."""
    async with open_message_system(config(metrics)) as system:
        ref = await system.spawn(CrashesFirst, [], name="crashes")
        await ref.cast("x")
        await trio.sleep(10)
        assert metrics.value("terraphim.agent.crashes") == 1
        assert metrics.value("terraphim.agent.restarts") == 1


async def test_admission_waits_are_a_histogram_per_agent(
    metrics: Metrics, autojump_clock: trio.testing.MockClock
) -> None:
    """A rate limit of one cast per 2 s: of three casts, the second waits 2 s and the third
    4 s; the histogram of the limited agent holds those two waits."""

    class Quick(Agent):
        async def handle_cast(self, msg: Any, ctx: Context) -> None:
            pass

    async with open_message_system(config(metrics)) as system:
        ref = await system.spawn(Quick, name="limited", admission=[RateLimit(requests=1, per=2.0)])
        for number in range(3):
            await ref.cast(number)
        await trio.sleep(5)
        point = metrics.read()["terraphim.admission.wait"][(("terraphim.agent", "limited"),)]
    assert point.count == 2
    assert point.sum == pytest.approx(6.0)
    assert point.max == pytest.approx(4.0)
