"""The router: where an addressed message goes.

It resolves addresses only; it owns no task. What must wait (retries after their backoff, which
is also how a message reaches an agent again after its restart, and how an open circuit gets
its trial messages once its reset timeout has passed) waits in the delivery layer's retry
scheduler, on the system's one timer service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import trio

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_instance, validator
from .._core.ids import AgentId
from .._core.messages import Envelope
from .._primitives.circuit import CircuitBreaker, CircuitBreakerConfig, CircuitState
from ..errors import InvalidConfig
from .directory import LocalDirectory
from .endpoint import Endpoint
from .groups import Group

__all__ = ["CustomRoute", "RoutedTo", "Router", "RouterConfig", "RouterHost", "RouterStats"]


class RoutedTo(Protocol):
    """A destination a custom router returns, as the router reads it: whose id the copy is
    addressed to, and the endpoint that gets it.

    Today's implementations: ``_behaviour.refs.AgentRef`` and ``PoolRef``.
    """

    @property
    def id(self) -> AgentId: ...

    def destination(self, envelope: Envelope) -> Endpoint | None: ...


@runtime_checkable
class CustomRoute(Protocol):
    """A custom router as the router calls it. Users write against the public
    ``MessageRouter`` (``_system/custom_router.py``), whose ``route`` takes the
    ``MessageSystem`` and returns ``AgentRef``\\ s, types this layer cannot name; any
    ``MessageRouter`` is one of these.
    """

    def route(self, envelope: Envelope, system: Any) -> Sequence[RoutedTo]: ...


class _Waiting(Protocol):
    @property
    def waiting(self) -> int: ...


class RouterHost(Protocol):
    """What the router asks of its system: the directory it resolves names in, the clock its
    statistics read, the retries waiting (for its statistics), and itself to hand to a custom
    router.

    Today's implementation: ``_system.system.MessageSystem``.
    """

    @property
    def registry(self) -> LocalDirectory[Any]: ...

    @property
    def clock(self) -> trio.abc.Clock: ...

    @property
    def delivery(self) -> _Waiting: ...


def _check_router(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, CustomRoute):
        raise InvalidConfig(f"{attribute.name} must have a route(envelope, system) method")


@attrs.frozen(kw_only=True)
class RouterConfig:
    """How the router guards recipients and chooses them.

    Attributes:
        circuit_breaker: the breaker every recipient gets on its first failure; ``None``
            turns circuit breaking off.
        custom_router: routes addressed messages in place of the registry (see
            :class:`MessageRouter`).
    """

    circuit_breaker: CircuitBreakerConfig | None = attrs.field(
        factory=CircuitBreakerConfig,
        validator=validator(check_instance, CircuitBreakerConfig, optional=True),
    )
    custom_router: CustomRoute | None = attrs.field(default=None, validator=_check_router)


@attrs.frozen(kw_only=True)
class RouterStats:
    """A snapshot of the router."""

    #: The circuit of every agent that has failed at least once (others are closed).
    circuits: Mapping[AgentId, CircuitState]
    #: How many of those are open now.
    open_circuits: int
    #: Messages routed by address (``send_message``) or through a pool.
    routed: int
    #: Messages waiting for a retry.
    retries_waiting: int
    #: Pools running.
    pools: int


class Router:
    """Resolves addresses and keeps the pools."""

    def __init__(self, config: RouterConfig, system: RouterHost) -> None:
        self.config = config
        self._system = system
        #: The groups (pools) running, by their id.
        self.pools: dict[AgentId, Group] = {}
        self.routed = 0

    def targets_of(
        self, envelope: Envelope, *, retry: bool = False
    ) -> list[tuple[Endpoint | None, Envelope]]:
        """Where an addressed message goes now: ``(endpoint, copy)`` pairs, one per recipient, or
        a single ``(None, envelope)`` when nobody takes it.

        The custom router decides, if there is one; but a retry of a copy it addressed to an
        agent (by ``AgentId``) goes to that agent. A retry is the same message: it is counted
        as routed once, when first sent.
        """
        if not retry:
            self.routed += 1
        custom = self.config.custom_router
        if custom is None or (retry and isinstance(envelope.recipient, AgentId)):
            return [(self._registered_target(envelope), envelope)]
        routed = custom.route(envelope, self._system)
        # What it returned is not refs (None, a name, ids): said at the send, as a bad
        # argument is, rather than as the TypeError or AttributeError of reading it; a retry,
        # which has no caller to tell, makes it a NOT_FOUND dead letter. A router written as
        # a generator runs its own code in ``list``: its errors stay its own.
        try:
            returned = iter(routed)
        except TypeError:
            raise _not_refs(custom, routed) from None
        refs = list(returned)
        try:
            copies = [envelope.evolve(recipient=ref.id) for ref in refs]
            destinations = [ref.destination for ref in refs]
        except AttributeError:
            raise _not_refs(custom, routed) from None
        if not refs:
            return [(None, envelope)]
        # Outside the check above: a pool's destination runs its key function, user code.
        return [
            (destination(copy), copy)
            for destination, copy in zip(destinations, copies, strict=True)
        ]

    def _registered_target(self, envelope: Envelope) -> Endpoint | None:
        """The endpoint of the running agent (or group member) that the recipient's name or
        id stands for."""
        directory = self._system.registry
        agent_id = directory.resolve(envelope.recipient)
        if agent_id is None:
            return None
        group = self.pools.get(agent_id)
        if group is not None:
            return group.choose(envelope)
        return directory.endpoint(agent_id)

    def stats(self) -> RouterStats:
        """A frozen snapshot of the router's state."""
        now = self._system.clock.current_time()
        # Stats report circuits: of the admission policies, the circuit breakers.
        breakers = (
            (endpoint.id, endpoint.admission)
            if isinstance(endpoint.admission, CircuitBreaker)
            else (endpoint.id, getattr(endpoint.admission, "breaker", None))
            for endpoint in self._system.registry.endpoints()
        )
        circuits = {
            agent_id: breaker.state(now)
            for agent_id, breaker in breakers
            if isinstance(breaker, CircuitBreaker)
        }
        return RouterStats(
            circuits=circuits,
            open_circuits=sum(state is CircuitState.OPEN for state in circuits.values()),
            routed=self.routed,
            retries_waiting=self._system.delivery.waiting,
            pools=len(self.pools),
        )


def _not_refs(custom: CustomRoute, routed: object) -> InvalidConfig:
    """The error of a custom router that returned ``routed``, which is not refs."""
    return InvalidConfig(
        f"the custom router {bounded_repr(custom)} returned {bounded_repr(routed)}:"
        " route() returns the refs (AgentRef, PoolRef) that get the message"
    )
