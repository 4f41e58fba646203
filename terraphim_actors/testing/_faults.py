"""``FaultInjector``: seeded, counted faults around agents and routes.

A guarantee is only as good as the failures it has been tested against. The injector makes
those failures on purpose (a handler that crashes, a handler that stalls, a route that loses,
doubles, delays or reorders envelopes), decides each one with its own seeded random generator
so that a failing run repeats, and counts every fault it makes, so that a test can check that
what the system reports adds up to what was done to it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any, TypeVar

import attrs
import trio

from .. import Agent, MessageKind, MessageRouter, MessageSystem
from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_instance, check_seconds
from ..errors import InvalidConfig
from ._faulty_agent import HandlerFaults, wrap
from ._faulty_route import FaultyLink, FaultyRouter

__all__ = ["FaultInjector", "FaultStats", "check_probability"]

AgentT = TypeVar("AgentT", bound=Agent)

#: Every kind of message: what a wrapped agent's faults apply to unless told otherwise.
ALL_KINDS = frozenset(MessageKind)


@attrs.frozen(kw_only=True)
class FaultStats:
    """A snapshot of what an injector has seen and done."""

    #: Handler runs of wrapped agents that the injector considered (of the kinds it wraps).
    handler_runs: int
    #: Handler runs it made raise ``InjectedFault``.
    crashes: int
    #: Handler runs, or envelopes on a link, it held back for the delay.
    delays: int
    #: Envelopes that passed through its routers and links.
    routed: int
    #: Envelopes it dropped.
    drops: int
    #: Envelopes it delivered twice.
    duplicates: int
    #: Envelopes it held back on a link until the next one had gone.
    reorders: int

    @property
    def total(self) -> int:
        """Every fault injected."""
        return self.crashes + self.delays + self.drops + self.duplicates + self.reorders


@attrs.define
class _Counters:
    """What :class:`FaultStats` snapshots; the injector's routers, links and wrapped agents
    add to it."""

    handler_runs: int = 0
    crashes: int = 0
    delays: int = 0
    routed: int = 0
    drops: int = 0
    duplicates: int = 0
    reorders: int = 0


def check_probability(name: str, value: object) -> float:
    """``value`` if it is a probability, else ``InvalidConfig``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidConfig(f"{name} must be a number from 0 to 1, got {bounded_repr(value)}")
    return float(value)


class FaultInjector:
    """Makes seeded faults and counts them; see :meth:`wrap_agent`, :meth:`router` and
    :meth:`link`.

    One injector draws every decision from one ``random.Random(seed)`` (``seed=None`` draws a
    fresh seed from the OS): in a Trio run on a ``MockClock``, whose scheduling is itself
    seeded, the same seed and the same traffic make the same faults.
    """

    def __init__(self, *, seed: int | None = 0) -> None:
        if seed is not None:
            check_count("seed", seed, minimum=0)
        #: The seed of every decision, to report with a failure so that it can be replayed.
        self.seed = seed
        self._random = random.Random(seed)
        self._counters = _Counters()

    def __repr__(self) -> str:
        return f"<FaultInjector seed={self.seed}: {self.stats().total} faults>"

    def stats(self) -> FaultStats:
        """A frozen snapshot of the counts."""
        return FaultStats(**attrs.asdict(self._counters))

    def decide(self, probability: float) -> bool:
        """Draw one decision that comes out True with ``probability`` (no draw for 0 or 1)."""
        if probability <= 0:
            return False
        if probability >= 1:
            return True
        return self._random.random() < probability

    # -- around an agent ------------------------------------------------------------------

    def wrap_agent(
        self,
        agent_class: type[AgentT],
        *,
        crash_probability: float = 0.0,
        crash_on: Iterable[int] = (),
        crash_if: Callable[[Any], object] | None = None,
        delay: float = 0.0,
        delay_probability: float = 1.0,
        kinds: Collection[MessageKind] = ALL_KINDS,
    ) -> type[AgentT]:
        """A subclass of ``agent_class`` whose handlers fail on purpose; spawn it in its place.

        Before each handler run of the ``kinds`` chosen, the wrapper may wait ``delay`` seconds
        (with ``delay_probability``), then crash the run by raising :class:`InjectedFault`
        (before the real handler runs, so that a crashed run has no effect) if the run is one
        of ``crash_on``, if ``crash_if(payload)`` is true, or with ``crash_probability``.

        Args:
            crash_on: run numbers that crash, counted per agent from 1 across its restarts
                (a retried message is a new run).
            crash_if: crashes every run whose payload it accepts ("a poison message").

        Raises:
            InvalidConfig: ``agent_class`` is not an ``Agent`` subclass, or an option is out of
                range.
        """
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise InvalidConfig(
                f"agent_class must be an Agent subclass, got {bounded_repr(agent_class)}"
            )
        runs = _set_of("crash_on", crash_on)
        for run in runs:
            check_count("crash_on", run, minimum=1)
        if crash_if is not None and not callable(crash_if):
            raise InvalidConfig(f"crash_if must be a predicate, got {bounded_repr(crash_if)}")
        check_seconds("delay", delay, allow_zero=True)
        chosen = _set_of("kinds", kinds)
        for kind in chosen:
            check_instance("kinds", kind, MessageKind)
        faults = HandlerFaults(
            injector=self,
            crash_probability=check_probability("crash_probability", crash_probability),
            crash_on=runs,
            crash_if=crash_if,
            delay=delay,
            delay_probability=check_probability("delay_probability", delay_probability),
            kinds=chosen,
        )
        return wrap(agent_class, faults)

    # -- around a route -------------------------------------------------------------------

    def router(
        self,
        inner: MessageRouter | None = None,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
    ) -> FaultyRouter:
        """A :class:`~terraphim_actors.MessageRouter` for ``RouterConfig(custom_router=...)``
        that drops or doubles what ``inner`` routes (by default: to the envelope's recipient).

        A dropped envelope is, to the delivery layer, one its route could not place: a
        ``NOT_FOUND`` failure. At most once, that is a ``NOT_FOUND`` dead letter (and
        ``send_message`` raises ``AgentNotFound``); under a retrying guarantee it is retried,
        and a retry addressed by name asks the router again. A doubled envelope reaches its
        recipient twice under one message id: exactly once suppresses the second.

        Raises:
            InvalidConfig: a probability is out of range, or ``inner`` is no router.
        """
        if inner is not None and not isinstance(inner, MessageRouter):
            raise InvalidConfig(
                f"inner must have a route(envelope, system) method: {bounded_repr(inner)}"
            )
        return FaultyRouter(
            self,
            inner,
            drop=check_probability("drop", drop),
            duplicate=check_probability("duplicate", duplicate),
        )

    @contextlib.asynccontextmanager
    async def link(
        self,
        system: MessageSystem,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.0,
        delay_probability: float = 1.0,
        reorder: float = 0.0,
    ) -> AsyncIterator[FaultyLink]:
        """A lossy, slow, out-of-order link in front of ``system.send_message``, open for the
        block: ``await link.send(envelope)`` in place of ``await system.send_message(...)``.

        A link sits before the system, as a network would: an envelope it drops never reaches
        the delivery layer, so the link files it as a ``NOT_FOUND`` dead letter of the system
        (detail: dropped in transit) and counts it; a dropped call is never answered, and its
        caller's ``CallTimeout`` is what it sees. Delayed envelopes are sent by the link's
        tasks after ``delay`` seconds; a reordered one waits until the next envelope has gone.
        Leaving the block sends what is held back and waits for the delayed ones; leaving it
        with an error files them as dead letters instead.

        Raises:
            InvalidConfig: an option is out of range.
        """
        check_instance("system", system, MessageSystem)
        check_seconds("delay", delay, allow_zero=True)
        faults = {
            "drop": check_probability("drop", drop),
            "duplicate": check_probability("duplicate", duplicate),
            "delay_probability": check_probability("delay_probability", delay_probability),
            "reorder": check_probability("reorder", reorder),
        }
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            link = FaultyLink(self, system, nursery, delay=delay, **faults)
            try:
                yield link
            except BaseException as error:
                body_error = error  # raised as is, not wrapped in the nursery's group
                link.abandon()
            else:
                await link.flush()
        if body_error is not None:
            raise body_error


def _set_of(name: str, values: Iterable[Any]) -> frozenset[Any]:
    """``values`` as a set, or ``InvalidConfig`` if they are not a collection (a bare run
    number or kind, ``None``), rather than the TypeError ``frozenset`` raises."""
    try:
        return frozenset(values)
    except TypeError:
        raise InvalidConfig(f"{name} must be a collection, got {bounded_repr(values)}") from None
