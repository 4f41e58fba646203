"""Small agents shared by the runtime tests.

``Recorder`` is a passive agent that remembers what it was sent. ``Runner`` lets a test act
*as* an agent: each call or cast carries a function that runs inside the agent's handler, so a
test can use the handler's ``ctx`` (defer, monitor, send_after, start_soon, stop) directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import trio

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeferredReply,
    DeliveryConfig,
    DeliveryGuarantee,
    ExitReason,
    MessageSystemConfig,
    RouterConfig,
)

#: A system that never retries: for tests of what a sender sees when a delivery fails.
AT_MOST_ONCE = MessageSystemConfig(
    delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
)


def lenient_config(
    *,
    guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
    breaker: CircuitBreakerConfig | None = None,
    router: Any = None,
    **delivery: Any,
) -> MessageSystemConfig:
    """A system that restarts up to 100 times and retries without jitter, so that a test's
    crashes never end it and its retry times are exact."""
    delivery.setdefault("jitter", 0.0)
    return MessageSystemConfig(
        max_restarts=100,
        delivery=DeliveryConfig(guarantee=guarantee, **delivery),
        router=RouterConfig(circuit_breaker=breaker, custom_router=router),
    )


class Boom(Exception):
    """What a failing handler raises."""


class Named(Agent):
    """Replies / records with the name it was given; ``"fail"`` raises, ``"hang"`` hangs."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append(self.name)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "fail":
            raise Boom("fail")
        if message == "hang":
            await trio.sleep_forever()
        self.log.append(self.name)
        return self.name


#: What a ``Runner`` is sent: a function of the handler's context, sync or async.
Action = Callable[[Context], Any]

#: A 10 MB prompt: a payload (or an error message) that must never be quoted whole.
HUGE_PROMPT = "x" * 10_000_000


async def hold_forever(ctx: Context) -> None:
    """An action that keeps the agent busy until it is cancelled."""
    await trio.sleep_forever()


def busy_for(seconds: float) -> Action:
    """An action that keeps the agent busy for ``seconds`` of Trio time."""

    async def busy(ctx: Context) -> None:
        await trio.sleep(seconds)

    return busy


def until(event: trio.Event) -> Action:
    """An action that keeps the agent busy until ``event`` is set."""

    async def wait(ctx: Context) -> None:
        await event.wait()

    return wait


async def run_action(action: Action, ctx: Context) -> Any:
    """Run an action in a handler, awaiting its result when it is awaitable."""
    result = action(ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


class Recorder(Agent):
    """Appends ``(kind, payload)`` for every message it handles; a call replies its payload."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        self.log.append(("call", message))
        return message

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append(("cast", message))

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.log.append(("info", message))


class Runner(Agent):
    """Runs the action it is sent inside its handler, and records infos and stops.

    A call replies with the action's result (awaited if it is awaitable); a cast runs the
    action for its effect. Infos (``Down``, timers, notifications) are appended to ``inbox``,
    the reason given to each ``on_stop`` to ``stops``.
    """

    def __init__(
        self, inbox: list[Any] | None = None, stops: list[ExitReason] | None = None
    ) -> None:
        self.inbox = [] if inbox is None else inbox
        self.stops = [] if stops is None else stops

    async def handle_call(self, message: Action, ctx: Context) -> Any:
        return await run_action(message, ctx)

    async def handle_cast(self, message: Action, ctx: Context) -> None:
        await run_action(message, ctx)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.inbox.append(message)

    async def on_stop(self, reason: ExitReason) -> None:
        self.stops.append(reason)


class Silent(Agent):
    """Keeps every default handler: it handles nothing."""


async def call_and_keep(ref: AgentRef, payload: Any, outcomes: list[Any], **kwargs: Any) -> None:
    """Make a call and append its reply, or the error it raised, to ``outcomes``."""
    try:
        outcomes.append(await ref.call(payload, **kwargs))
    except Exception as error:
        outcomes.append(error)


def defer_into(held: list[DeferredReply]) -> Any:
    """An action that defers the call in hand and keeps its handle in ``held``."""
    return lambda ctx: held.append(ctx.defer())
