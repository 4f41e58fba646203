"""``TracingInstrument``'s spans, read back from the SDK's in-memory exporter: one per handled
message, a child of the span current where it was sent, however many agents it went through."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from terraphim_actors import (
    Agent,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageSystem,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors.errors import AgentStopped
from terraphim_actors.otel import TracingInstrument


class Traces:
    """An SDK tracer provider that keeps every finished span in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        [span] = self.named(name)
        return span


@pytest.fixture
def traces() -> Iterator[Traces]:
    traces = Traces()
    yield traces
    traces.provider.shutdown()


@asynccontextmanager
async def traced(traces: Traces, **config: Any) -> AsyncIterator[MessageSystem]:
    instrument = TracingInstrument(tracer_provider=traces.provider)
    async with open_message_system(MessageSystemConfig(instruments=[instrument], **config)) as s:
        yield s


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def attribute(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {})[key]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


# -- a question through four agents --------------------------------------------------------


class Planner(Agent):
    async def handle_call(self, msg: Any, ctx: Context) -> Any:
        await ctx.system.whereis("worker").cast(msg)  # type: ignore[union-attr]
        return "planned"


class Worker(Agent):
    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        found = await ctx.system.whereis("tool").call(msg)  # type: ignore[union-attr]
        await ctx.system.whereis("aggregator").cast(found)  # type: ignore[union-attr]


class Tool(Agent):
    async def handle_call(self, msg: Any, ctx: Context) -> Any:
        return f"found {msg}"


class Aggregator(Agent):
    def __init__(self, done: trio.MemorySendChannel[Any]) -> None:
        self.done = done

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        self.done.send_nowait(msg)


class Agents:
    """The four agents of a question, and the answers the aggregator got."""

    def __init__(self, system: MessageSystem) -> None:
        self.system = system
        self.done, self.answers = trio.open_memory_channel[Any](100)

    async def spawn(self) -> Agents:
        await self.system.spawn(Aggregator, self.done, name="aggregator")
        await self.system.spawn(Tool, name="tool")
        await self.system.spawn(Worker, name="worker")
        await self.system.spawn(Planner, name="planner")
        return self

    async def ask(self, traces: Traces) -> None:
        """Put one question to the planner in a root span of its own; wait for its answer to
        reach the aggregator."""
        planner = self.system.whereis("planner")
        assert planner is not None
        with trio.fail_after(5), traces.tracer.start_as_current_span("question"):
            assert await planner.call("the weather") == "planned"
            assert await self.answers.receive() == "found the weather"


class TestOneTrace:
    async def test_a_question_through_four_agents_is_one_trace(self, traces: Traces) -> None:
        """planner (a call) -> worker (a cast) -> tool (a call) and aggregator (a cast): each
        handler's span is a child of the span that sent its message, all in the root's trace."""
        async with traced(traces) as system:
            await (await Agents(system).spawn()).ask(traces)
        question = traces.one("question")
        planner, worker = traces.one("planner call"), traces.one("worker cast")
        tool, aggregator = traces.one("tool call"), traces.one("aggregator cast")
        assert parent_of(question) is None
        assert parent_of(planner) == span_id(question)
        assert parent_of(worker) == span_id(planner)
        assert parent_of(tool) == span_id(worker)
        assert parent_of(aggregator) == span_id(worker)
        assert {trace_id(span) for span in traces.spans()} == {trace_id(question)}
        assert len(traces.spans()) == 5

    async def test_two_questions_are_two_traces(self, traces: Traces) -> None:
        """A handler's span is current only while it runs: the next question's spans do not
        hang from the last one's."""
        async with traced(traces) as system:
            agents = await Agents(system).spawn()
            await agents.ask(traces)
            await agents.ask(traces)
        questions = traces.named("question")
        assert len(questions) == 2
        for name in ("planner call", "worker cast", "tool call", "aggregator cast"):
            assert sorted(trace_id(span) for span in traces.named(name)) == sorted(
                trace_id(question) for question in questions
            )

    async def test_a_call_from_another_thread_is_a_child_of_that_threads_span(
        self, traces: Traces
    ) -> None:
        """``system.from_thread.call`` made in a span of a thread of its own (a web server's,
        say): the handler's span is that span's child."""
        async with traced(traces) as system:
            ref = await system.spawn(Tool, name="tool")

            def in_thread() -> Any:
                with traces.tracer.start_as_current_span("request"):
                    return system.from_thread.call(ref, "x")

            with trio.fail_after(5):
                assert await trio.to_thread.run_sync(in_thread) == "found x"
        assert parent_of(traces.one("tool call")) == span_id(traces.one("request"))

    async def test_a_message_sent_outside_any_span_starts_a_trace(self, traces: Traces) -> None:
        """No span current at the send: the handler's span is a root, even for an agent
        spawned while a span was current (its task inherited that span, its messages not)."""
        async with traced(traces) as system:
            with traces.tracer.start_as_current_span("spawning"):
                ref = await system.spawn(Tool, name="tool")
            assert await ref.call("x") == "found x"
        assert parent_of(traces.one("tool call")) is None
        assert trace_id(traces.one("tool call")) != trace_id(traces.one("spawning"))

    async def test_send_message_carries_the_span_and_the_senders_headers(
        self, traces: Traces
    ) -> None:
        """A hand-built envelope sent in a span: its handler is that span's child, and the
        headers it was built with are still there."""
        seen: list[dict[str, str]] = []

        class Reads(Agent):
            async def handle_cast(self, msg: Any, ctx: Context) -> None:
                seen.append(dict(ctx.envelope.headers))

        async with traced(traces) as system:
            ref = await system.spawn(Reads, name="reads")
            with traces.tracer.start_as_current_span("sending"):
                envelope = Envelope(
                    kind=MessageKind.CAST, payload="x", recipient=ref.id, headers={"tenant": "a"}
                )
                await system.send_message(envelope)
                await trio.testing.wait_all_tasks_blocked()
        assert parent_of(traces.one("reads cast")) == span_id(traces.one("sending"))
        assert seen[0]["tenant"] == "a"
        assert seen[0]["traceparent"].startswith("00-")


# -- what a span says -----------------------------------------------------------------------


class Flaky(Agent):
    """Fails its first try of each message (``tried`` outlives its instances)."""

    def __init__(self, tried: set[Any]) -> None:
        self.tried = tried

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        if msg not in self.tried:
            self.tried.add(msg)
            raise RuntimeError("first try")


class Slow(Agent):
    async def handle_call(self, msg: Any, ctx: Context) -> Any:
        await trio.sleep(10)


class TestAttributes:
    async def test_a_handled_call_says_who_what_which_and_ok(self, traces: Traces) -> None:
        """Agent, kind, message id, attempt, guarantee and outcome; a call is a server span."""
        ids: list[int] = []

        class Answers(Agent):
            async def handle_call(self, msg: Any, ctx: Context) -> Any:
                ids.append(ctx.message_id)

        once = DeliveryConfig(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        async with traced(traces, delivery=once) as system:
            ref = await system.spawn(Answers, name="answers")
            await ref.call("x")
        span = traces.one("answers call")
        assert span.kind is SpanKind.SERVER
        assert dict(span.attributes or {}) == {
            "terraphim.agent": "answers",
            "terraphim.message.kind": "call",
            "terraphim.message.id": str(ids[0]),
            "terraphim.message.attempt": 0,
            "terraphim.message.guarantee": "exactly-once",
            "terraphim.outcome": "ok",
        }
        assert span.status.status_code is StatusCode.UNSET

    async def test_a_crash_is_an_error_and_its_retry_the_next_attempt(
        self,
        traces: Traces,
        autojump_clock: trio.testing.MockClock,
        quiet_crash_logs: None,
    ) -> None:
        """A retried cast: a consumer span per attempt, both children of the sender's span;
        the first an error naming the exception, the second ok."""
        async with traced(traces) as system:
            ref = await system.spawn(Flaky, set(), name="flaky")
            with traces.tracer.start_as_current_span("sending"):
                await ref.cast("job")
            await trio.sleep(60)
        first, second = sorted(
            traces.named("flaky cast"), key=lambda s: attribute(s, "terraphim.message.attempt")
        )
        assert [attribute(s, "terraphim.outcome") for s in (first, second)] == [
            "RuntimeError",
            "ok",
        ]
        assert [attribute(s, "terraphim.message.attempt") for s in (first, second)] == [0, 1]
        assert first.status.status_code is StatusCode.ERROR
        assert [event.name for event in first.events] == ["exception"]
        assert first.kind is SpanKind.CONSUMER
        sending = span_id(traces.one("sending"))
        assert parent_of(first) == parent_of(second) == sending

    async def test_a_handler_cancelled_from_outside_is_cancelled(
        self, traces: Traces, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An agent stopped in the middle of a handler: its span ends, saying so."""
        async with traced(traces) as system:
            ref = await system.spawn(Slow, name="slow")

            async def caller() -> None:
                with pytest.raises(AgentStopped):
                    await ref.call("x", 60)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                await trio.sleep(1)
                await system.stop(ref)
        span = traces.one("slow call")
        assert attribute(span, "terraphim.outcome") == "cancelled"
        assert span.status.status_code is StatusCode.UNSET


def test_importing_the_library_does_not_import_opentelemetry() -> None:
    """Tracing is opt-in: a program that never imports ``terraphim_actors.otel`` never loads
    OpenTelemetry."""
    check = (
        "import sys, terraphim_actors, terraphim_actors.cli;"
        "sys.exit(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", check], timeout=60, check=False).returncode == 0
