"""A trace crosses nodes: the ``traceparent`` a traced send puts in a message's headers travels
with it to an agent on another node, whose handler's span is the sender's child, under every
guarantee (at most once, casts leave in batches)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
from nodes import BOUND, fresh_cluster, node_config, node_of, received
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from terraphim_actors import Agent, Context, DeliveryGuarantee, MessageSystem, open_message_system
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.otel import TracingInstrument


class Echo(Agent):
    """Reports each cast on ``seen``; answers a call with its argument."""

    def __init__(self, seen: trio.MemorySendChannel[Any]) -> None:
        self.seen = seen

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        self.seen.send_nowait(payload)

    async def handle_call(self, payload: Any, ctx: Context) -> Any:
        return payload


@contextlib.asynccontextmanager
async def traced_nodes(
    server: LocalNatsServer, guarantee: DeliveryGuarantee, provider: TracerProvider
) -> AsyncIterator[tuple[MessageSystem, MessageSystem]]:
    """Nodes ``a`` and ``b`` of a fresh cluster, each tracing to ``provider``."""
    cluster = fresh_cluster()
    configs = [
        attrs.evolve(
            node_config(server, cluster, node, guarantee),
            instruments=[TracingInstrument(tracer_provider=provider)],
        )
        for node in ("a", "b")
    ]
    async with open_message_system(configs[0]) as a, open_message_system(configs[1]) as b:
        yield a, b


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


#: Casts at most once leave in batches over core NATS; at least once, one by one through
#: JetStream (exactly once takes the same way).
GUARANTEES = [DeliveryGuarantee.AT_MOST_ONCE, DeliveryGuarantee.AT_LEAST_ONCE]


@pytest.mark.parametrize("guarantee", GUARANTEES, ids=lambda g: g.value)
async def test_a_cast_and_a_call_to_another_node_are_children_of_the_senders_span(
    nats_server: LocalNatsServer, guarantee: DeliveryGuarantee
) -> None:
    """A cast and a call sent from node ``a`` in a span, handled on node ``b``: both
    handlers' spans are that span's children, in its trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    send, seen = trio.open_memory_channel[Any](10)
    async with traced_nodes(nats_server, guarantee, provider) as (a, b):
        await b.spawn(Echo, send, name="echo")
        with trio.fail_after(BOUND):
            ref = await node_of(a).wait_for("echo")
        with provider.get_tracer("tests").start_as_current_span("asking") as asking:
            await ref.cast("cast")
            with trio.fail_after(BOUND):
                assert await ref.call("call", BOUND) == "call"
        assert await received(seen, 1) == ["cast"]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = asking.get_span_context()
    assert parent_of(spans["echo cast"]) == root.span_id
    assert parent_of(spans["echo call"]) == root.span_id
    assert {trace_of(spans[name]) for name in ("echo cast", "echo call")} == {root.trace_id}
    provider.shutdown()
