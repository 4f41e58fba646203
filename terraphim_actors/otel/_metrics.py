"""The system's metrics, as OpenTelemetry instruments: read from the system's own counters
when a reader collects, so that a message pays nothing for them; only the admission wait, an
event the system does not keep, is recorded as it happens."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .._core.ids import AgentId

__all__ = ["BOOKS", "SystemMetrics", "agent_label"]

#: The delivery books' counters, each the counter ``terraphim.messages.<name>``.
BOOKS = (
    "sent",
    "delivered",
    "acknowledged",
    "retried",
    "failed",
    "duplicates_suppressed",
    "dead_lettered",
    "forwarded",
)

#: The attribute that says which agent an observation is about.
AGENT = "terraphim.agent"


def agent_label(agent_id: AgentId) -> str:
    """An agent as spans and metrics name it: its name, or ``agent-`` and its uid's start."""
    return agent_id.name or f"agent-{agent_id.uid.hex[:8]}"


class SystemMetrics:
    """The metrics of the systems an instrument is installed in (usually one; several are
    summed).

    - ``terraphim.mailbox.depth`` (gauge, per agent): messages waiting in its mailbox;
    - ``terraphim.messages.<count>`` (counters): the delivery books' ``sent``, ``delivered``,
      ``acknowledged``, ``retried``, ``failed``, ``duplicates_suppressed``, ``dead_lettered``
      and ``forwarded``, and ``terraphim.messages.pending`` (up-down): not settled yet;
    - ``terraphim.agent.restarts`` and ``terraphim.agent.crashes`` (counters);
    - ``terraphim.admission.wait`` (histogram, seconds, per agent): how long each message
      that waited for admission waited.

    A system is held weakly: one that is gone stops being observed.
    """

    __slots__ = ("_systems", "_waits")

    def __init__(self, meter: metrics.Meter) -> None:
        self._systems: weakref.WeakSet[Any] = weakref.WeakSet()
        meter.create_observable_gauge(
            "terraphim.mailbox.depth",
            [self._depths],
            unit="{message}",
            description="messages waiting in an agent's mailbox",
        )
        for name in BOOKS:
            meter.create_observable_counter(
                f"terraphim.messages.{name}",
                [self._book(name)],
                unit="{message}",
                description=f"messages {name.replace('_', ' ')}, as the delivery books count",
            )
        meter.create_observable_up_down_counter(
            "terraphim.messages.pending",
            [self._book("pending")],
            unit="{message}",
            description="messages accepted and not settled yet",
        )
        for name in ("restarts", "crashes"):
            meter.create_observable_counter(
                f"terraphim.agent.{name}",
                [self._lifecycle(f"agent_{name}")],
                unit=f"{{{name[:-1]}}}",
                description=f"agent {name}",
            )
        self._waits = meter.create_histogram(
            "terraphim.admission.wait",
            unit="s",
            description="seconds a message waited for admission",
        )

    def observe(self, system: Any) -> None:
        """Report ``system``'s metrics from now on."""
        self._systems.add(system)

    def admission_waited(self, agent_id: AgentId, waited: float) -> None:
        self._waits.record(waited, {AGENT: agent_label(agent_id)})

    def _depths(self, options: CallbackOptions) -> Iterable[Observation]:
        for system in list(self._systems):
            for mailbox in system.get_stats()[1]:
                yield Observation(
                    mailbox.current_queue_size, {AGENT: agent_label(mailbox.agent_id)}
                )

    def _book(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            systems = list(self._systems)
            return [Observation(sum(getattr(s.delivery.get_stats(), name) for s in systems))]

        return observe

    def _lifecycle(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            systems = list(self._systems)
            return [Observation(sum(getattr(s.get_stats()[0], name) for s in systems))]

        return observe
