"""The router: its configuration, custom ``MessageRouter`` policies, and its statistics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from agents import Recorder, Runner, lenient_config

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    Envelope,
    LoadBalancing,
    MessageRouter,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    RouterStats,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentNotFound, InvalidConfig


class Table:
    """A custom router: a table from a recipient (any address) to the refs that get it."""

    def __init__(self) -> None:
        self.routes: dict[object, list[AgentRef]] = {}
        self.asked: list[tuple[Envelope, MessageSystem]] = []

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        self.asked.append((envelope, system))
        return self.routes.get(envelope.recipient, [])


class Envelopes(Agent):
    """Keeps every envelope it handles, to see what exactly arrived."""

    def __init__(self, received: list[Envelope]) -> None:
        self.received = received

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.received.append(ctx.envelope)


@contextlib.asynccontextmanager
async def routed_system(
    router: MessageRouter | None,
    guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
) -> AsyncIterator[MessageSystem]:
    """A running system whose addressed messages go where ``router`` says."""
    config = MessageSystemConfig(
        delivery=DeliveryConfig(guarantee=guarantee),
        router=RouterConfig(custom_router=router),
    )
    async with open_message_system(config) as system:
        yield system


class TestConfig:
    def test_defaults(self) -> None:
        """By default every recipient gets the default breaker and no custom router is set."""
        config = RouterConfig()
        assert config.circuit_breaker == CircuitBreakerConfig()
        assert config.custom_router is None

    @pytest.mark.parametrize("router", [object(), "table", 42, Recorder([])])
    def test_custom_router_without_route_raises_invalid_config(self, router: object) -> None:
        """A custom router must have a ``route`` method."""
        with pytest.raises(InvalidConfig):
            RouterConfig(custom_router=router)  # type: ignore[arg-type]

    @pytest.mark.parametrize("breaker", [{"failure_threshold": 2}, 5, "off"])
    def test_circuit_breaker_of_wrong_type_raises_invalid_config(self, breaker: object) -> None:
        """The breaker must be a ``CircuitBreakerConfig`` (or ``None``)."""
        with pytest.raises(InvalidConfig):
            RouterConfig(circuit_breaker=breaker)  # type: ignore[arg-type]

    def test_object_with_route_is_a_message_router(self) -> None:
        """Any object with ``route(envelope, system)`` is a ``MessageRouter``, and accepted."""
        table = Table()
        assert isinstance(table, MessageRouter)
        assert RouterConfig(custom_router=table).custom_router is table


class TestCustomRouter:
    async def test_custom_router_decides_where_send_message_goes(self) -> None:
        """``send_message`` to an address the router knows reaches the agent it names."""
        table = Table()
        async with routed_system(table) as system:
            log: list[tuple[str, Any]] = []
            ref = await system.spawn(Recorder, log)
            table.routes["news"] = [ref]
            await system.send_message(cast(None, "headline", recipient="news"))
            await trio.testing.wait_all_tasks_blocked()
            assert log == [("cast", "headline")]

    async def test_custom_router_overrides_the_registry(self) -> None:
        """A message addressed to a registered name goes where the router says, not there."""
        table = Table()
        async with routed_system(table) as system:
            named: list[tuple[str, Any]] = []
            chosen: list[tuple[str, Any]] = []
            await system.spawn(Recorder, named, name="addressed")
            table.routes["addressed"] = [await system.spawn(Recorder, chosen)]
            await system.send_message(cast(None, "redirected", recipient="addressed"))
            await trio.testing.wait_all_tasks_blocked()
            assert (named, chosen) == ([], [("cast", "redirected")])

    async def test_envelope_without_recipient_goes_where_the_router_says(self) -> None:
        """With a custom router, an envelope needs no recipient: the router chooses."""
        table = Table()
        async with routed_system(table) as system:
            log: list[tuple[str, Any]] = []
            table.routes[None] = [await system.spawn(Recorder, log)]
            await system.send_message(cast(None, "unaddressed"))
            await trio.testing.wait_all_tasks_blocked()
            assert log == [("cast", "unaddressed")]

    async def test_router_is_given_the_envelope_and_the_system(self) -> None:
        """``route`` receives the envelope being sent and the system sending it."""
        table = Table()
        async with routed_system(table) as system:
            table.routes["news"] = [await system.spawn(Recorder, [])]
            envelope = cast(None, "headline", recipient="news")
            await system.send_message(envelope)
            assert table.asked == [(envelope, system)]

    async def test_call_through_custom_router_gets_its_reply(self) -> None:
        """A call routed by the custom router is answered on its reply handle."""
        table = Table()
        async with routed_system(table) as system:
            table.routes["echo"] = [await system.spawn(Recorder, [])]
            envelope, reply = call(None, "ping", 1.0, recipient="echo")
            await system.send_message(envelope)
            assert await reply == "ping"

    async def test_several_agents_each_get_a_copy(self) -> None:
        """Routed to several agents, each handles its own copy of the message."""
        table = Table()
        async with routed_system(table) as system:
            logs: list[list[tuple[str, Any]]] = [[], [], []]
            table.routes["all"] = [await system.spawn(Recorder, log) for log in logs]
            await system.send_message(cast(None, "fan out", recipient="all"))
            await trio.testing.wait_all_tasks_blocked()
            assert logs == [[("cast", "fan out")]] * 3

    async def test_copies_share_the_message_id_and_are_readdressed(self) -> None:
        """Each copy keeps the message id and is addressed to the agent that got it."""
        table = Table()
        async with routed_system(table) as system:
            first: list[Envelope] = []
            second: list[Envelope] = []
            refs = [await system.spawn(Envelopes, first), await system.spawn(Envelopes, second)]
            table.routes["both"] = refs
            envelope = cast(None, "copied", recipient="both")
            await system.send_message(envelope)
            await trio.testing.wait_all_tasks_blocked()
            [one], [other] = first, second
            assert one is not other
            assert one.id == other.id == envelope.id
            assert [one.recipient, other.recipient] == [ref.id for ref in refs]

    async def test_router_may_name_a_pool(self) -> None:
        """A pool's ref from the router is balanced over its members as usual."""
        table = Table()
        async with routed_system(table) as system:
            log: list[tuple[str, Any]] = []
            pool = await system.spawn_pool(
                Recorder, log, size=2, name="workers", strategy=LoadBalancing.ROUND_ROBIN
            )
            table.routes["jobs"] = [pool]
            for index in range(4):
                await system.send_message(cast(None, index, recipient="jobs"))
            await trio.testing.wait_all_tasks_blocked()
            received = {
                stats.agent_id.name: stats.messages_received for stats in system.get_stats()[1]
            }
            assert received == {"workers-0": 2, "workers-1": 2}
            assert sorted(log) == [("cast", index) for index in range(4)]

    async def test_no_recipient_at_most_once_is_a_not_found_dead_letter(self) -> None:
        """At most once, a message routed to nobody raises ``AgentNotFound`` and is filed
        as a ``NOT_FOUND`` dead letter."""
        async with routed_system(Table(), DeliveryGuarantee.AT_MOST_ONCE) as system:
            with pytest.raises(AgentNotFound):
                await system.send_message(cast(None, "lost", recipient="nowhere"))
            [letter] = system.dead_letters
            assert letter.reason is DeadLetterReason.NOT_FOUND
            assert letter.envelope.payload == "lost"

    async def test_no_recipient_at_least_once_is_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once, a message routed to nobody waits in the router for a retry."""
        async with routed_system(Table()) as system:
            await system.send_message(cast(None, "later", recipient="nowhere"))
            [waiting] = system.delivery.get_retry_candidates()
            assert waiting.envelope.payload == "later"
            assert waiting.last_failure is DeadLetterReason.NOT_FOUND
            assert system.dead_letters == ()

    async def test_retry_reaches_the_agent_the_router_names_later(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retried message asks the router again, and reaches whom it names by then."""
        table = Table()
        async with routed_system(table) as system:
            log: list[tuple[str, Any]] = []
            await system.send_message(cast(None, "later", recipient="news"))
            table.routes["news"] = [await system.spawn(Recorder, log)]
            await trio.sleep(1)
            assert log == [("cast", "later")]

    async def test_retry_reaches_every_agent_the_router_names_later(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retried message routed to several agents gives each of them a copy."""
        table = Table()
        async with routed_system(table) as system:
            logs: list[list[tuple[str, Any]]] = [[], []]
            await system.send_message(cast(None, "later", recipient="all"))
            table.routes["all"] = [await system.spawn(Recorder, log) for log in logs]
            await trio.sleep(1)
            assert logs == [[("cast", "later")]] * 2

    async def test_retry_does_not_bypass_the_router_through_the_registry(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A message the router sends nowhere never reaches the agent registered under its
        address, even on a retry: it ends as a dead letter."""
        async with routed_system(Table()) as system:
            log: list[tuple[str, Any]] = []
            await system.spawn(Recorder, log, name="filtered")
            await system.send_message(cast(None, "dropped", recipient="filtered"))
            await trio.sleep(10)
            assert log == []
            [letter] = system.dead_letters
            assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED


class TestStats:
    async def test_stats_is_a_router_stats(self, system: MessageSystem) -> None:
        """A fresh system's router has routed nothing and has nothing waiting."""
        stats = system.router.stats()
        assert isinstance(stats, RouterStats)
        assert (stats.routed, stats.retries_waiting, stats.open_circuits, stats.pools) == (
            0,
            0,
            0,
            0,
        )

    async def test_routed_counts_send_message(self, system: MessageSystem) -> None:
        """Each ``send_message`` to an agent counts one routed message."""
        await system.spawn(Recorder, [], name="worker")
        for index in range(3):
            await system.send_message(cast(None, index, recipient="worker"))
        assert system.router.stats().routed == 3

    async def test_routed_counts_pool_sends(self, system: MessageSystem) -> None:
        """Each message sent through a pool's ref counts one routed message."""
        pool = await system.spawn_pool(Recorder, [], size=2)
        await pool.cast("one")
        await pool.call("two")
        assert system.router.stats().routed == 2

    async def test_direct_sends_are_not_routed(self, system: MessageSystem) -> None:
        """A send through an agent's own ref goes straight to its mailbox, not via the router."""
        ref = await system.spawn(Recorder, [])
        await ref.cast("direct")
        await ref.call("direct")
        assert system.router.stats().routed == 0

    async def test_a_retried_message_counts_as_routed_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retry is the same message: a pool's cast crashed once and handled on its retry
        is one routed message, and a direct cast's retry is not routed at all."""
        crashed: set[str] = set()

        def crash_once(tag: str) -> Any:
            def action(ctx: Context) -> None:
                if tag not in crashed:
                    crashed.add(tag)
                    raise RuntimeError("first try")

            return action

        pool = await system.spawn_pool(Runner, size=2, name="pool")
        ref = await system.spawn(Runner)
        await pool.cast(crash_once("pool"))
        await ref.cast(crash_once("direct"))
        await trio.sleep(10)
        assert system.delivery.get_stats().retried == 2
        assert system.router.stats().routed == 1

    async def test_fanned_out_message_counts_once(self) -> None:
        """A message the custom router sends to several agents is one routed message."""
        table = Table()
        async with routed_system(table) as system:
            table.routes["all"] = [await system.spawn(Recorder, []) for _ in range(3)]
            await system.send_message(cast(None, "fan out", recipient="all"))
            assert system.router.stats().routed == 1

    async def test_message_routed_to_a_pool_by_custom_router_counts_once(self) -> None:
        """A message the custom router sends to a pool is one routed message."""
        table = Table()
        async with routed_system(table) as system:
            table.routes["jobs"] = [await system.spawn_pool(Recorder, [], size=2)]
            await system.send_message(cast(None, "job", recipient="jobs"))
            assert system.router.stats().routed == 1

    async def test_retries_waiting_shows_messages_waiting(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Messages waiting for their retry are counted until their retries run out."""
        await system.send_message(cast(None, "one", recipient="nobody"))
        await system.send_message(cast(None, "two", recipient="nobody"))
        assert system.router.stats().retries_waiting == 2
        await trio.sleep(10)
        assert system.router.stats().retries_waiting == 0
        assert [letter.reason for letter in system.dead_letters] == [
            DeadLetterReason.RETRIES_EXHAUSTED
        ] * 2

    async def test_retries_waiting_drops_when_the_retry_is_delivered(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A waiting message leaves the count once its retry reaches a recipient."""
        await system.send_message(cast(None, "early", recipient="late"))
        assert system.router.stats().retries_waiting == 1
        log: list[tuple[str, Any]] = []
        await system.spawn(Recorder, log, name="late")
        await trio.sleep(1)
        assert system.router.stats().retries_waiting == 0
        assert log == [("cast", "early")]


AT_LEAST_ONCE = DeliveryGuarantee.AT_LEAST_ONCE


def balanced(system: MessageSystem) -> None:
    """The accounting identity of DeliveryStats, and nothing left pending."""
    stats = system.delivery.get_stats()
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
    assert stats.pending == 0, stats
    assert stats.sent == settled, stats


class Flaky:
    """A custom router that sends nowhere the first time, then raises (a bug of the user's)."""

    def __init__(self) -> None:
        self.asked = 0

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        self.asked += 1
        if self.asked > 1:
            raise LookupError("routing table is being rebuilt")
        return []


class Returns:
    """A custom router that returns ``value``, whatever it is: a bug of the user's."""

    def __init__(self, value: object) -> None:
        self.value = value

    def route(self, envelope: Envelope, system: MessageSystem) -> Any:
        return self.value


NOT_REFS = pytest.mark.parametrize(
    "routed", [None, "sink", [5], 5], ids=["None", "a-name", "not-a-ref", "an-int"]
)


class TestCustomRouterReturningNoRefs:
    """What a router returns that is not refs is a bad configuration, said as one."""

    async def test_an_error_of_a_generator_routers_own_code_stays_its_own(self) -> None:
        """A router written as a generator runs its code as its refs are read: a bug there
        reaches the sender as itself, not as "returned something other than refs"."""

        class ByField:
            def route(self, envelope: Envelope, system: Any) -> Iterator[AgentRef]:
                yield system.whereis(envelope.payload["to"])  # a str payload: TypeError

        async with routed_system(ByField()) as system:
            await system.spawn(Recorder, [], name="sink")
            with pytest.raises(TypeError, match="string indices"):
                await system.send_message(cast(None, "not a dict", recipient="sink"))

    @NOT_REFS
    async def test_send_message_raises_invalid_config(
        self, autojump_clock: trio.testing.MockClock, routed: object
    ) -> None:
        """At the send, as a bad argument is: not the TypeError or AttributeError of reading
        what the router returned. Nothing was accepted, so nothing is left to settle."""
        async with routed_system(Returns(routed)) as system:
            await system.spawn(Recorder, [], name="sink")
            with pytest.raises(InvalidConfig, match="custom router"):
                await system.send_message(cast(None, "x", recipient="sink"))
            envelope, _ = call(None, "x", 5.0, recipient="sink")
            with pytest.raises(InvalidConfig, match="custom router"):
                await system.send_message(envelope)
            assert system.delivery.get_stats().sent == 0

    @NOT_REFS
    async def test_a_retry_makes_it_a_not_found_dead_letter(
        self, autojump_clock: trio.testing.MockClock, routed: object
    ) -> None:
        """A retry has no caller to tell: the message ends as a router that raises ends it."""
        router = Returns([])
        async with open_message_system(lenient_config(router=router)) as system:
            await system.send_message(cast(None, "x", recipient="sink"))
            router.value = routed
            await trio.sleep(5)
            [letter] = system.dead_letters
            assert letter.reason is DeadLetterReason.NOT_FOUND
            assert "custom router" in letter.detail


class TestCustomRouterRetries:
    """A message the custom router sent nowhere is retried through the router again."""

    async def test_custom_router_retry_fan_out_keeps_the_accounting_balanced(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """A message the custom router first sends nowhere is retried; on the retry the router
        names two agents and each gets a copy. Every copy is a message to settle, so `sent` must
        count it: `sent == acknowledged + ... + pending` with `pending == 0` at the end."""
        table = Table()
        async with open_message_system(lenient_config(router=table)) as system:
            logs: list[list[tuple[str, Any]]] = [[], []]
            await system.send_message(cast(None, "later", recipient="all"))
            table.routes["all"] = [await system.spawn(Recorder, log) for log in logs]
            await trio.sleep(1)
            assert logs == [[("cast", "later")]] * 2
            balanced(system)  # sent == 1, acknowledged == 2, pending == -1

    async def test_call_routed_nowhere_is_retried_through_the_custom_router(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """MessageRouter's contract: "A retry of a message it routed nowhere asks it again". A call
        routed nowhere at first must reach the agent the router names later, as a cast does
        (TestCustomRouter.test_retry_reaches_the_agent_the_router_names_later)."""
        table = Table()
        async with open_message_system(lenient_config(router=table)) as system:
            envelope, handle = call(None, "hello", 5.0, recipient="later")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(system.send_message, envelope)
                await trio.testing.wait_all_tasks_blocked()
                table.routes["later"] = [await system.spawn(Recorder, [])]
            assert await handle == "hello"

    async def test_custom_router_raising_in_a_retry_does_not_crash_the_system(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """The router's task runs user code (MessageRouter.route, a pool's key) for retries. An
        exception there must settle that one message (dead letter), not kill the router task and
        with it the whole system (every agent, the body of open_message_system)."""
        router = Flaky()
        async with open_message_system(lenient_config(router=router)) as system:
            ref = await system.spawn(Recorder, [])
            await system.send_message(cast(None, "x", recipient="somewhere"))
            await trio.sleep(1)  # the retry asks the router, which raises
            assert await ref.call("still alive?") == "still alive?"
