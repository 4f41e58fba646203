"""The router: where an addressed message goes.

It resolves addresses only; it owns no task. What must wait (retries after their backoff, which
is also how a message reaches an agent again after its restart, and how an open circuit gets
its trial messages once its reset timeout has passed) waits in the delivery layer's retry
scheduler, on the system's one timer service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .._core.checks import check_instance, validator
from .._core.ids import AgentId
from .._core.messages import Envelope
from .._primitives.circuit import CircuitBreakerConfig, CircuitState
from ..errors import InvalidConfig
from .endpoint import Endpoint
from .groups import Group

if TYPE_CHECKING:
    from .._behaviour.refs import AgentRef
    from .._system.system import MessageSystem

__all__ = ["MessageRouter", "Router", "RouterConfig", "RouterStats"]


@runtime_checkable
class MessageRouter(Protocol):
    """A routing policy of your own, in place of the built-in one for addressed messages.

    ``system.send_message(envelope)`` asks it which agents get the envelope; each gets its own
    copy (same message id, readdressed). Return no ref to say that nobody does: the message is
    then handled as for a missing recipient (retried, or a ``NOT_FOUND`` dead letter). A ref
    may be a pool's, which balances as usual. It runs on the sender's path: keep it quick and
    do not await. A retry of a message it routed nowhere asks it again (unless the message is
    addressed by ``AgentId``); a copy it addressed to an agent is retried to that agent.
    """

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        """The agents that should receive ``envelope``."""
        ...


def _check_router(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, MessageRouter):
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
    custom_router: MessageRouter | None = attrs.field(default=None, validator=_check_router)


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

    def __init__(self, config: RouterConfig, system: MessageSystem) -> None:
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
        agent (by ``AgentId``) goes to that agent.
        """
        self.routed += 1
        custom = self.config.custom_router
        if custom is None or (retry and isinstance(envelope.recipient, AgentId)):
            return [(self._registered_target(envelope), envelope)]
        refs = list(custom.route(envelope, self._system))
        if not refs:
            return [(None, envelope)]
        copies = [envelope] + [attrs.evolve(envelope) for _ in refs[1:]]
        for ref, copy in zip(refs, copies, strict=True):
            copy.recipient = ref.id
        return [(ref.destination(copy), copy) for ref, copy in zip(refs, copies, strict=True)]

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
        circuits = {
            endpoint.id: endpoint.admission.state(now)
            for endpoint in self._system.registry.endpoints()
            if endpoint.admission is not None
        }
        return RouterStats(
            circuits=circuits,
            open_circuits=sum(state is CircuitState.OPEN for state in circuits.values()),
            routed=self.routed,
            retries_waiting=self._system.delivery.waiting,
            pools=len(self.pools),
        )
