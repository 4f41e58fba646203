"""Faults inside an agent: a subclass whose handlers stall or crash before the real ones run."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import trio

from .. import Agent, AgentId, Context, MessageKind
from .._core.bounded_repr import bounded_repr
from ._errors import InjectedFault

if TYPE_CHECKING:
    from ._faults import FaultInjector

__all__ = ["HandlerFaults", "wrap"]

AgentT = TypeVar("AgentT", bound=Agent)

Handler = Callable[[Agent, Any, Context], Awaitable[Any]]


@attrs.define(kw_only=True)
class HandlerFaults:
    """The faults of one wrapped agent class, and its run counts per agent."""

    injector: FaultInjector
    crash_probability: float
    crash_on: frozenset[int]
    crash_if: Callable[[Any], object] | None
    delay: float
    delay_probability: float
    kinds: frozenset[MessageKind]
    runs: collections.Counter[AgentId] = attrs.field(factory=collections.Counter)

    async def before(self, kind: MessageKind, payload: Any, ctx: Context) -> None:
        """Run before a handler: maybe wait, maybe raise ``InjectedFault``."""
        if kind not in self.kinds:
            return
        injector = self.injector
        counters = injector._counters
        counters.handler_runs += 1
        agent = ctx.self.id
        self.runs[agent] += 1
        run = self.runs[agent]
        if self.delay and injector.decide(self.delay_probability):
            counters.delays += 1
            await trio.sleep(self.delay)
        if (
            run in self.crash_on
            or (self.crash_if is not None and self.crash_if(payload))
            or injector.decide(self.crash_probability)
        ):
            counters.crashes += 1
            raise InjectedFault(
                f"injected crash of {agent!r} on its run {run}: {bounded_repr(payload)}"
            )


def wrap(agent_class: type[AgentT], faults: HandlerFaults) -> type[AgentT]:
    """A subclass of ``agent_class`` whose three handlers go through ``faults`` first."""

    def wrapped(kind: MessageKind, handler: Handler) -> Handler:
        async def handle(agent: Agent, message: Any, ctx: Context) -> Any:
            await faults.before(kind, message, ctx)
            return await handler(agent, message, ctx)

        handle.__name__ = handler.__name__
        handle.__doc__ = handler.__doc__
        return handle

    namespace = {
        "__doc__": f"{agent_class.__name__}, with faults injected before its handlers.",
        "__module__": agent_class.__module__,
        "handle_call": wrapped(MessageKind.CALL, agent_class.handle_call),
        "handle_cast": wrapped(MessageKind.CAST, agent_class.handle_cast),
        "handle_info": wrapped(MessageKind.INFO, agent_class.handle_info),
    }
    subclass = type(f"Faulty{agent_class.__name__}", (agent_class,), namespace)
    return cast("type[AgentT]", subclass)
