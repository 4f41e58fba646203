"""Endpoints, the local directory and groups: the per-destination state routing owns.

An endpoint is what a ref and delivery see of an agent: an inbox to put into, an admission
policy (the circuit breaker), a dedup window and a group. These tests drive each seam with a
stand-in behind it, and pin that the state lives on the endpoint across cells.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)
from terraphim_actors._core.messages import Envelope, call, cast
from terraphim_actors._core.protocols import AdmissionPolicy, Directory, Inbox
from terraphim_actors._primitives.balancing import Balancer, LoadBalancing
from terraphim_actors._primitives.circuit import CircuitBreaker
from terraphim_actors._primitives.dedup import DedupWindow, HandledMessages
from terraphim_actors._routing.directory import LocalDirectory
from terraphim_actors._routing.endpoint import Endpoint
from terraphim_actors._routing.groups import Group
from terraphim_actors.errors import CallToSelf, CircuitOpen, InvalidConfig, MailboxFull


class ListInbox:
    """An inbox that keeps what it is given in a list, or refuses when told to be full."""

    def __init__(self, *, full: bool = False) -> None:
        self.received: list[Envelope] = []
        self.full = full

    def put_nowait(self, envelope: Envelope) -> None:
        if self.full:
            raise MailboxFull("the list inbox is full")
        self.received.append(envelope)

    async def put(self, envelope: Envelope) -> None:
        await trio.lowlevel.checkpoint()
        self.put_nowait(envelope)

    def has_room(self) -> bool:
        return not self.full

    def __len__(self) -> int:
        return len(self.received)


class Occupant:
    """A process stand-in: serving unless told otherwise, never the caller's own task."""

    def __init__(self, *, serving: bool = True, load: int = 0, own_task: bool = False) -> None:
        self.serving = serving
        self.gone = False
        self.leaving = False
        self.load = load
        self.in_own_task = own_task

    def refusal(self) -> Any:
        raise AssertionError("not asked in these tests")

    def describe(self, envelope: Envelope) -> str:
        return repr(envelope)

    def format_message(self, payload: Any) -> str:
        return repr(payload)


def endpoint(occupant: Occupant | None = None, inbox: ListInbox | None = None) -> Endpoint:
    inbox = ListInbox() if inbox is None else inbox
    return Endpoint(AgentId(), inbox, Occupant() if occupant is None else occupant)


def group(members: list[Endpoint], counts: Any = None) -> Group:
    made = Group(
        AgentId(name="workers"),
        len(members),
        Balancer(LoadBalancing.ROUND_ROBIN, len(members)),
        HandledMessages(DedupWindow()),
        trio.testing.MockClock(),
        counts or SimpleNamespace(routed=0),
    )
    for position, member in enumerate(members):
        made.join(position, member)
    return made


class TestEndpointBehindARef:
    async def test_what_a_ref_sends_reaches_the_inbox_behind_the_endpoint(
        self, system: MessageSystem
    ) -> None:
        """Delivery puts into the endpoint's inbox, whatever implements it."""
        inbox = ListInbox()
        ref = AgentRef(endpoint(inbox=inbox), system)
        ref.cast_nowait("first")
        await ref.info("second")
        assert [envelope.payload for envelope in inbox.received] == ["first", "second"]
        assert {envelope.recipient for envelope in inbox.received} == {ref.id}
        assert system.delivery.get_stats().delivered == 2

    async def test_a_full_inbox_is_a_failure_of_the_send(self, system: MessageSystem) -> None:
        """An inbox that raises ``MailboxFull`` fails an at-most-once send with it, and the
        message is a dead letter."""
        ref = AgentRef(endpoint(inbox=ListInbox(full=True)), system)
        once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
        with pytest.raises(MailboxFull):
            ref.cast_nowait("dropped", options=once)
        assert [letter.envelope.payload for letter in system.dead_letters] == ["dropped"]

    async def test_an_open_circuit_on_the_endpoint_refuses_before_the_inbox(
        self, system: MessageSystem
    ) -> None:
        """The admission policy on the endpoint is asked first: an open circuit keeps the
        message out of the inbox."""
        inbox = ListInbox()
        target = endpoint(inbox=inbox)
        breaker = target.admission = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1))
        breaker.record_failure(trio.current_time())
        once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
        with pytest.raises(Exception, match="circuit"):
            AgentRef(target, system).cast_nowait("refused", options=once)
        assert inbox.received == []

    def test_the_mailbox_is_an_inbox(self) -> None:
        """Today's mailbox implements the inbox seam."""
        from terraphim_actors import Mailbox

        inbox: Inbox = Mailbox(AgentId())
        assert inbox.has_room()


class Failing(Agent):
    stop_on = (KeyError,)

    async def handle_cast(self, message: str, ctx: Context) -> None:
        if message == "stop for good":
            raise KeyError(message)
        if message == "crash":
            raise ValueError(message)

    async def handle_call(self, message: str, ctx: Context) -> str:
        if message == "fail":
            raise RuntimeError(message)
        return "ok"


class TestEndpointAcrossCells:
    async def test_a_new_cell_under_the_same_id_keeps_the_endpoint_and_its_circuit(
        self,
    ) -> None:
        """An agent stopped for good and started again by its subtree's restart runs in a new
        cell, attached to the same endpoint: its circuit breaker is the same object, with the
        failures it counted, because it lives there (nothing is copied), and old refs reach
        the new cell."""
        config = MessageSystemConfig(
            router=RouterConfig(circuit_breaker=CircuitBreakerConfig(failure_threshold=50))
        )
        async with open_message_system(config) as system:
            await system.start_supervisor(
                [
                    system.agent_spec(Failing, name="worker"),
                    system.agent_spec(Failing, name="sibling"),
                ],
                max_restarts=0,  # a crash makes the subtree give up: the root restarts it
            )
            ref = system.ref("worker")
            first = ref._agent()
            with pytest.raises(Exception, match="fail"):
                await ref.call("fail")
            breaker = first.endpoint.admission
            assert breaker is not None
            await ref.cast("stop for good")
            await trio.testing.wait_all_tasks_blocked()
            assert not ref.alive
            await system.ref("sibling").cast("crash")
            await trio.testing.wait_all_tasks_blocked()
            second = ref._agent()
            assert second is not first
            assert second.endpoint is first.endpoint
            assert second.endpoint.admission is breaker
            assert breaker.state(trio.current_time()).value == "closed"
            assert ref.alive
            assert await ref.call("hello") == "ok"


class Gate:
    """An admission policy that is no circuit breaker: it refuses every message before
    ``opens_at`` and admits every one from then on; it notes when it was asked and what it was
    told."""

    def __init__(self, opens_at: float) -> None:
        self.opens_at = opens_at
        self.admitted_at: list[float] = []
        self.refused_at: list[float] = []
        self.outcomes: list[bool] = []

    def would_admit(self, now: float) -> bool:
        return now >= self.opens_at

    def admit(self, now: float) -> bool:
        (self.admitted_at if self.would_admit(now) else self.refused_at).append(now)
        return self.would_admit(now)

    def retry_at(self, now: float) -> float | None:
        return None if self.would_admit(now) else self.opens_at

    def record(self, succeeded: bool, now: float) -> None:
        self.outcomes.append(succeeded)


class Timed(Agent):
    """Notes the Trio time at which it handles each cast."""

    def __init__(self, handled_at: list[tuple[str, float]]) -> None:
        self.handled_at = handled_at

    async def handle_cast(self, message: str, ctx: Context) -> None:
        self.handled_at.append((message, trio.current_time()))


class TestAdmissionSeam:
    """Delivery consults an endpoint's admission through the ``AdmissionPolicy`` seam alone:
    a policy that is no circuit breaker refuses, schedules retries and hears outcomes."""

    async def test_a_refusing_policy_fails_the_send_as_an_open_circuit(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Refused by the policy, an at-most-once cast raises ``CircuitOpen`` and is a dead
        letter for the open circuit; the agent never sees it. The router's stats, which report
        circuit breakers, list none."""
        handled: list[tuple[str, float]] = []
        async with open_message_system() as system:
            ref = await system.spawn(Timed, handled)
            gate = Gate(opens_at=float("inf"))
            policy: AdmissionPolicy = gate
            ref._agent().endpoint.admission = policy
            once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
            with pytest.raises(CircuitOpen):
                ref.cast_nowait("refused", options=once)
            await trio.testing.wait_all_tasks_blocked()
            assert [(letter.envelope.payload, letter.reason) for letter in system.dead_letters] == [
                ("refused", DeadLetterReason.CIRCUIT_OPEN)
            ]
            assert handled == []
            assert gate.refused_at == [trio.current_time()]
            stats = system.router.stats()
            assert (dict(stats.circuits), stats.open_circuits) == ({}, 0)

    async def test_a_retry_waits_for_the_policy_s_retry_at(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retried cast refused by the policy is not tried again before its ``retry_at``,
        though its backoff is far shorter; then it is admitted, handled, and the success is
        recorded with the policy."""
        handled: list[tuple[str, float]] = []
        config = MessageSystemConfig(delivery=DeliveryConfig(retry_delay=0.5, jitter=0.0))
        async with open_message_system(config) as system:
            ref = await system.spawn(Timed, handled)
            start = trio.current_time()
            gate = Gate(opens_at=start + 20.0)
            ref._agent().endpoint.admission = gate
            ref.cast_nowait("later", options=MessageOptions(timeout=60.0))
            await trio.sleep(30.0)  # the mock clock jumps; well past the gate's time
            assert gate.refused_at == [start]
            assert gate.admitted_at == [start + 20.0]
            assert handled == [("later", start + 20.0)]
            assert gate.outcomes == [True]
            assert system.dead_letters == ()
            stats = system.delivery.get_stats()
            assert (stats.retried, stats.acknowledged, stats.pending) == (1, 1, 0)


class TestLocalDirectory:
    def test_it_finds_the_endpoint_of_a_registered_agent(self) -> None:
        """``endpoint(id)`` is the resident's endpoint while it is registered, then None."""
        directory: LocalDirectory[Any] = LocalDirectory()
        agent_id = directory.claim("worker")
        resident = SimpleNamespace(id=agent_id, endpoint=endpoint())
        directory.add(resident)
        assert directory.endpoint(agent_id) is resident.endpoint
        assert directory.endpoints() == [resident.endpoint]
        directory.remove(resident)
        assert directory.endpoint(agent_id) is None
        assert directory.has_stopped(agent_id)

    def test_it_is_a_directory(self) -> None:
        """``LocalDirectory`` implements the directory seam."""
        directory: Directory[Endpoint] = LocalDirectory()
        assert directory.resolve("nobody") is None


class TestGroup:
    def test_it_skips_a_member_whose_circuit_refuses(self) -> None:
        """A member whose admission refuses is not chosen while another can take it."""
        refusing, open_to_all = endpoint(), endpoint()
        refusing.admission = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1))
        refusing.admission.record_failure(0.0)
        workers = group([refusing, open_to_all])
        assert {workers.choose(None) for _ in range(4)} == {open_to_all}

    def test_it_prefers_running_members(self) -> None:
        """A member waiting to restart is skipped while another runs."""
        waiting, running = endpoint(Occupant(serving=False)), endpoint()
        workers = group([waiting, running])
        assert {workers.choose(None) for _ in range(4)} == {running}

    async def test_a_member_calling_its_own_group_is_not_chosen(self) -> None:
        """A call from a member's own task goes to another member; with no other, it is a
        ``CallToSelf``."""
        caller, other = endpoint(Occupant(own_task=True)), endpoint()
        request, _ = call(None, "question", 1.0, recipient=AgentId())
        assert group([caller, other]).choose(request) is other
        with pytest.raises(CallToSelf):
            group([caller]).choose(request)

    def test_sends_through_its_ref_are_counted_and_the_routers_are_not(self) -> None:
        """``route`` (a send through the group's ref) counts the message as routed;
        ``choose`` (the router's, which counted it already) does not."""
        counts = SimpleNamespace(routed=0)
        workers = group([endpoint()], counts)
        workers.route(None)
        workers.choose(None)
        assert counts.routed == 1

    def test_messages_are_addressed_to_it_by_id_or_name(self) -> None:
        """The group's window applies to what is addressed to the group, not to a member."""
        member = endpoint()
        workers = group([member])
        assert member.group is workers
        assert workers.addressed_by(workers.id)
        assert workers.addressed_by("workers")
        assert not workers.addressed_by(member.id)
        assert not workers.addressed_by(None)

    def test_it_is_not_one_agent(self) -> None:
        """Asking a group for its one destination is an error."""
        with pytest.raises(InvalidConfig):
            group([endpoint()]).only()

    def test_an_endpoint_is_its_own_destination(self) -> None:
        """An endpoint as an address routes to itself."""
        target = endpoint()
        assert target.route(None) is target
        assert target.choose(cast(None, "x", recipient=target.id)) is target
        assert target.only() is target
