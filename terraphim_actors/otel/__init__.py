"""Tracing and metrics with OpenTelemetry: the ``otel`` extra (``opentelemetry-api`` and
``-sdk``).

``MessageSystemConfig(instruments=[TracingInstrument()])`` gives every handled message a span,
a child of its sender's span: the sender's trace context travels in the message's headers as a
W3C ``traceparent``, because an agent's task outlives any one span and cannot inherit its
senders' context. The same instrument reports the system's metrics. Importing
``terraphim_actors`` does not import OpenTelemetry; importing this package does.
"""

from ._instrument import TracingInstrument

__all__ = ["TracingInstrument"]
