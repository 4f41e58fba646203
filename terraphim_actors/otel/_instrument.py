"""``TracingInstrument``: a span for each handled message, linked to its sender's span through
the message's headers, and the system's metrics."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from typing import Any

import trio
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from .._core.ids import AgentId
from .._core.instruments import Instrument
from .._core.messages import Envelope, MessageKind
from ._metrics import SystemMetrics, agent_label

__all__ = ["TracingInstrument"]

#: A handler's span, with the token that made it current.
_Open = tuple[trace.Span, Token[otel_context.Context]]

#: The name the tracer and the meter go by.
SCOPE = "terraphim_actors"

#: The attributes of a handled message's span.
AGENT = "terraphim.agent"
KIND = "terraphim.message.kind"
MESSAGE_ID = "terraphim.message.id"
ATTEMPT = "terraphim.message.attempt"
GUARANTEE = "terraphim.message.guarantee"
#: ``ok``, ``cancelled``, or the type of the error the handler raised.
OUTCOME = "terraphim.outcome"

#: A call is answered (a server); a cast or an info is consumed.
_SPAN_KINDS = {
    MessageKind.CALL: trace.SpanKind.SERVER,
    MessageKind.CAST: trace.SpanKind.CONSUMER,
    MessageKind.INFO: trace.SpanKind.CONSUMER,
}

#: The base of a handler's context: nothing from the agent's task (whose context is whatever
#: it inherited when it was spawned), only what the message carries.
_EMPTY = otel_context.Context()


class TracingInstrument(Instrument):
    """Traces every handled message and reports the system's metrics through OpenTelemetry.

    Spans: one per handler run (a retried message gets one per attempt), named
    ``"<agent> <kind>"``, a child of the span that was current where the message was sent;
    the handler's span is current while it runs, so that what it sends carries it on. Its
    attributes: ``terraphim.agent``, ``terraphim.message.kind``, ``terraphim.message.id``,
    ``terraphim.message.attempt``, ``terraphim.message.guarantee`` and ``terraphim.outcome``
    (``ok``, ``cancelled``, or the type of the handler's error, when the span's status is an
    error too). A message sent with no span current starts a trace of its own.

    Metrics (see ``SystemMetrics``): mailbox depths, the delivery books, restarts and crashes,
    read from the system when a reader collects, and the seconds messages waited for
    admission.

    Args:
        tracer_provider: where spans go (default: the global one, as set by
            ``opentelemetry.trace.set_tracer_provider``).
        meter_provider: where metrics go (default: the global one).
    """

    __slots__ = ("_metrics", "_open", "_propagator", "_tracer")

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()
        self._metrics = SystemMetrics(metrics.get_meter(SCOPE, meter_provider=meter_provider))
        #: The span of the handler each agent runs now, with the token that made it current.
        self._open: dict[AgentId, _Open] = {}

    def __repr__(self) -> str:
        return f"<TracingInstrument, {len(self._open)} handlers open>"

    def system_opened(self, system: Any) -> None:
        self._metrics.observe(system)

    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)  # nothing when no span is current
        return carrier or None

    def handler_started(self, agent_id: AgentId, envelope: Envelope) -> None:
        stale = self._open.pop(agent_id, None)
        if stale is not None:  # its end was never told (cannot happen while hooks hold)
            self._close(stale, "unfinished")
        headers = envelope.headers
        parent = self._propagator.extract(headers, _EMPTY) if headers else _EMPTY
        kind = envelope.kind
        label = agent_label(agent_id)
        span = self._tracer.start_span(
            f"{label} {kind.value}",
            parent,
            _SPAN_KINDS[kind],
            {
                AGENT: label,
                KIND: kind.value,
                MESSAGE_ID: str(envelope.id),
                ATTEMPT: envelope.attempt,
                GUARANTEE: _guarantee(envelope),
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._open[agent_id] = (span, token)

    def handler_finished(
        self, agent_id: AgentId, envelope: Envelope, error: BaseException | None
    ) -> None:
        entry = self._open.pop(agent_id, None)
        if entry is None:
            return
        if error is None:
            self._close(entry, "ok")
        elif isinstance(error, trio.Cancelled):
            self._close(entry, "cancelled")
        else:
            span = entry[0]
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            self._close(entry, type(error).__name__)

    def admission_waited(self, agent_id: AgentId, envelope: Envelope, waited: float) -> None:
        self._metrics.admission_waited(agent_id, waited)

    @staticmethod
    def _close(entry: _Open, outcome: str) -> None:
        """End a handler's span with ``outcome``, and make current again what was before."""
        span, token = entry
        otel_context.detach(token)
        span.set_attribute(OUTCOME, outcome)
        span.end()


def _guarantee(envelope: Envelope) -> str:
    guarantee = envelope.options.guarantee
    return "default" if guarantee is None else guarantee.value
