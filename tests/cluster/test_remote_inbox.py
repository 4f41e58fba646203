"""A remote agent's inbox and endpoint against a fake link: what they make of what the bridge
and the directory report, decided here instead of by the timing of a live server.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import outcome
import trio

from terraphim_actors import AgentId, CircuitBreakerConfig
from terraphim_actors._core.messages import Envelope, call
from terraphim_actors._primitives.circuit import CircuitBreaker
from terraphim_actors.cluster._directory import Placement
from terraphim_actors.cluster._remote import RemoteEndpoint
from terraphim_actors.cluster._subjects import Subjects
from terraphim_actors.errors import ClusterError


class FakeBridge:
    """Keeps what is submitted; the test decides how it ends."""

    def __init__(self) -> None:
        self.outcomes: list[Callable[[outcome.Outcome[Any]], None]] = []

    def submit(
        self, work: Callable[[], Awaitable[Any]], done: Callable[[outcome.Outcome[Any]], None]
    ) -> None:
        self.outcomes.append(done)


class FakeDirectory:
    def __init__(self) -> None:
        self.placements: dict[str, Placement] = {}

    def lookup(self, name: str) -> Placement | None:
        return self.placements.get(name)


class FakeDelivery:
    def __init__(self) -> None:
        self.forward_failures: list[ClusterError] = []

    def forward_failed(self, endpoint: Any, envelope: Envelope, error: ClusterError) -> None:
        self.forward_failures.append(error)

    def forwarded(self, envelope: Envelope) -> None:
        pass


class FakeLink:
    """A node's connection as a remote inbox sends through it, with nothing behind it."""

    max_payload = 1024 * 1024
    connected = True

    def __init__(self) -> None:
        self.bridge = FakeBridge()
        self.directory = FakeDirectory()
        self.subjects = Subjects("c")
        self.delivery = FakeDelivery()

    def now(self) -> float:
        return trio.current_time()

    def lookup(self, name: str) -> Placement | None:
        return self.directory.lookup(name)

    def local_endpoint(self, name: str) -> None:
        return None

    def call_started(self, node: str, envelope: Envelope, node_gone: Callable[[], None]) -> None:
        pass

    def call_ended(self, node: str, envelope: Envelope) -> bool:
        return True


def held_on(link: FakeLink, name: str, node: str = "b") -> RemoteEndpoint:
    """The endpoint of ``name``, held by a fresh agent on ``node``."""
    endpoint = RemoteEndpoint(AgentId(name=name), link)  # type: ignore[arg-type]
    link.directory.placements[name] = Placement(node, uuid.uuid4(), "one")
    return endpoint


async def test_a_request_that_times_out_times_the_call_out_as_its_callers_deadline_does() -> None:
    """The NATS request of a call times out at the caller's deadline: whichever of it and the
    caller's own timer fires first, the caller's reply slot expires (so that the timeout counts
    against the agent's circuit, as a local call's does), not merely fails."""
    link = FakeLink()
    endpoint = held_on(link, "worker")
    envelope, handle = call(None, "hello", 5.0, recipient="worker")
    endpoint.inbox.put_nowait(envelope)
    [answered] = link.bridge.outcomes
    answered(outcome.Error(nats.errors.TimeoutError()))
    assert handle.expired
    assert len(link.delivery.forward_failures) == 1


def test_a_name_given_to_another_agent_gives_its_endpoint_a_fresh_circuit() -> None:
    """The circuit of a remote name's endpoint judged the agent that held the name: once
    another agent holds it (spawned again, anywhere), the circuit starts afresh, as a local
    agent spawned again has a fresh endpoint."""
    link = FakeLink()
    endpoint = held_on(link, "worker")
    assert endpoint.remote.placement() is not None  # a send saw the agent
    endpoint.admission = breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1))
    breaker.record_failure(0.0)
    endpoint.name_taken(link.directory.placements["worker"])
    assert endpoint.admission is breaker  # the same agent again: the same circuit
    endpoint.name_taken(Placement("c", uuid.uuid4(), "two"))
    assert endpoint.admission is None
