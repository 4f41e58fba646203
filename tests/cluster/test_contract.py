"""The call/cast/info contract, run against a local ref and against a ref to an agent on
another node: the same results and the same errors either way.

Each test gets a ``route``: the sender's node, and the node its agents are spawned on (the
sender's own for ``local``, the other for ``remote``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from nodes import BOUND, Recorder, fresh_cluster, node_config, node_of, received, watch

from terraphim_actors import (
    Agent,
    AgentRef,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystem,
    open_message_system,
)
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.errors import (
    AgentNotFound,
    AgentStopped,
    CallFailed,
    CallTimeout,
    UnhandledMessage,
)


class Silent(Agent):
    """Handles no calls."""


class Route:
    """The sender's node, and the node its agents run on (the same one, or the other)."""

    def __init__(self, sender: MessageSystem, home: MessageSystem) -> None:
        self.sender = sender
        self.home = home

    async def place(self, agent_class: type[Agent], *args: Any, name: str) -> AgentRef:
        """Spawn ``agent_class(*args)`` named ``name`` at home; the sender's ref to it."""
        await self.home.spawn(agent_class, *args, name=name)
        with trio.fail_after(BOUND):
            ref: AgentRef = await node_of(self.sender).wait_for(name)
        return ref

    async def stop(self, name: str) -> None:
        """Stop the agent ``name`` for good, on its node."""
        await self.home.stop(self.home.ref(name))


@pytest.fixture(params=["local", "remote"])
async def route(
    request: pytest.FixtureRequest, nats_server: LocalNatsServer
) -> AsyncIterator[Route]:
    cluster = fresh_cluster()
    async with (
        open_message_system(node_config(nats_server, cluster, "a")) as a,
        open_message_system(node_config(nats_server, cluster, "b")) as b,
    ):
        yield Route(a, a if request.param == "local" else b)


async def test_a_call_returns_the_handlers_answer(
    route: Route,
) -> None:
    ref = await route.place(Recorder, name="worker")
    with trio.fail_after(BOUND):
        assert await ref.call(21) == 42


async def test_a_call_with_no_answer_in_time_raises_call_timeout(
    route: Route,
) -> None:
    ref = await route.place(Recorder, name="worker")
    with trio.fail_after(BOUND), pytest.raises(CallTimeout):
        await ref.call("slow", timeout=0.2)


async def test_a_handlers_error_is_call_failed_naming_it(
    route: Route,
) -> None:
    ref = await route.place(Recorder, name="worker")
    with trio.fail_after(BOUND), pytest.raises(CallFailed) as caught:
        await ref.call("boom")
    cause = caught.value.__cause__
    assert cause is not None
    assert getattr(cause, "type_name", type(cause).__name__) == "ValueError"


async def test_a_call_an_agent_does_not_handle_is_unhandled_message(
    route: Route,
) -> None:
    ref = await route.place(Silent, name="silent")
    with trio.fail_after(BOUND), pytest.raises(UnhandledMessage):
        await ref.call("anything")


async def test_casts_from_one_sender_arrive_in_order(
    route: Route,
) -> None:
    send, seen = trio.open_memory_channel[Any](100)
    ref = await route.place(Recorder, send, name="worker")
    for number in range(30):
        await ref.cast(number)
    assert await received(seen, 30) == list(range(30))


async def test_an_info_reaches_handle_info(route: Route) -> None:
    send, seen = trio.open_memory_channel[Any](10)
    ref = await route.place(Recorder, send, name="worker")
    ref.info_nowait("ping")
    assert await received(seen, 1) == [("info", "ping")]


async def test_a_call_to_an_agent_stopped_for_good_raises_agent_stopped(
    route: Route,
) -> None:
    ref = await route.place(Recorder, name="worker")
    downs = await watch(route.sender, ref)
    await route.stop("worker")
    await received(downs, 1)
    assert not ref.alive
    with trio.fail_after(BOUND), pytest.raises(AgentStopped):
        await ref.call(1, options=MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE))


async def test_a_name_nobody_holds_is_not_found(
    route: Route,
) -> None:
    assert route.sender.whereis("nobody") is None
    with pytest.raises(AgentNotFound):
        route.sender.ref("nobody")
