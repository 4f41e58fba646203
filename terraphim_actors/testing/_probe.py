"""``TestProbe``: an agent that a test stands behind, to see what other agents send.

Akka's TestKit gave actor tests their shape: hand a probe's ref to the code under test, then
assert on what arrives, in order, within a timeout. This is that probe for Trio. Every wait is
on Trio's clock, so under pytest-trio's ``autojump_clock`` (or any ``MockClock`` that jumps) a
three-second timeout or a ``expect_no_message(within=1.0)`` takes no real time at all.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar, overload

import attrs
import trio

from .. import (
    Agent,
    AgentId,
    AgentRef,
    Context,
    DeferredReply,
    Down,
    Envelope,
    MailboxConfig,
    MessageKind,
    MessageSystem,
)
from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_instance, check_seconds
from ..errors import CallFailed, InvalidConfig
from ._errors import ExpectationFailed
from ._matching import ANYTHING, describe, matches

__all__ = ["ReceivedMessage", "TestProbe"]

T = TypeVar("T")

#: Seconds an expectation waits unless told otherwise (Akka's default, 3 s).
DEFAULT_TIMEOUT = 3.0
#: Seconds ``expect_no_message`` watches unless told otherwise (Akka's default, 100 ms).
DEFAULT_QUIET_PERIOD = 0.1


@attrs.frozen(eq=False)
class ReceivedMessage:
    """One message as the probe received it: the envelope, when, and for an unanswered call
    the promise to answer it (see :meth:`TestProbe.reply`)."""

    envelope: Envelope
    #: Trio time at which the probe's handler took it.
    at: float
    #: The deferred reply of a call the probe does not answer by itself; ``None`` otherwise.
    deferred: DeferredReply | None = None

    @property
    def kind(self) -> MessageKind:
        """Whether it came as a call, a cast or an info."""
        return self.envelope.kind

    @property
    def payload(self) -> Any:
        """What was sent."""
        return self.envelope.payload

    @property
    def sender(self) -> AgentId | None:
        """The agent that sent it, if an agent did (Akka's ``lastSender``)."""
        return self.envelope.sender

    def __repr__(self) -> str:
        return f"<{self.kind.value} {bounded_repr(self.payload)} at {self.at:.3f}>"


@attrs.frozen
class _Watch:
    """The probe's own request to monitor an agent: handled, never recorded."""

    ref: AgentRef


class _ProbeAgent(Agent):
    """The agent behind a probe: it records each message into the probe and, for a call,
    replies by the probe's rule or defers the answer to the test."""

    def __init__(self, probe: TestProbe) -> None:
        self._probe = probe

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self._probe._record(ctx.envelope)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self._probe._record(ctx.envelope)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if isinstance(message, _Watch):
            try:
                return ctx.monitor(message.ref)
            except Exception as error:  # a pool's ref, say: the watcher raises it, not us
                return error
        reply = self._probe._reply
        if reply is None:
            self._probe._record(ctx.envelope, ctx.defer())
            return None
        self._probe._record(ctx.envelope)
        try:
            return reply(message)
        except Exception as error:
            # The caller sees what a crashing callee would give it; the probe keeps running.
            failure = CallFailed(f"the probe's reply rule raised {bounded_repr(error)}")
            failure.__cause__ = error
            caller = ctx.caller
            assert caller is not None
            caller.fail(failure)
            return None


class TestProbe:
    """A recording agent with assertions, for tests of agents (Akka's ``TestProbe``).

    Start one with :meth:`spawn`, pass :attr:`ref` to the agents under test, then assert on
    what they send it::

        probe = await TestProbe.spawn(system)
        worker = await system.spawn(Worker, probe.ref)
        await worker.cast("job")
        assert await probe.expect(Done) == Done("job")
        await probe.expect_no_message(within=1.0)

    Messages queue in arrival order and each ``expect*`` takes from the front (as Akka's do),
    so a test states the order it expects; :meth:`fish_for` skips what it does not care about.
    Everything received stays in :attr:`received`. A call is recorded like any message; it is
    answered by the ``reply`` rule given to :meth:`spawn`, or else by the test with
    :meth:`reply` (until then its caller waits, as it would for a slow agent).

    Waits use Trio's clock: with pytest-trio's ``autojump_clock`` fixture they take no real
    time, however long the timeouts. Use a probe inside the Trio run that spawned it.
    """

    #: A test helper, not a test class: pytest must not try to collect it.
    __test__ = False

    def __init__(
        self,
        *,
        reply: Callable[[Any], Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Prefer :meth:`spawn`, which also starts the agent; arguments as for it."""
        if reply is not None and not callable(reply):
            raise InvalidConfig(
                f"reply must be a function of the call's payload, got {bounded_repr(reply)}"
            )
        check_seconds("timeout", timeout)
        self._reply = reply
        self._timeout = timeout
        self._received: list[ReceivedMessage] = []
        self._queue: collections.deque[ReceivedMessage] = collections.deque()
        self._arrival = trio.lowlevel.ParkingLot()
        self._ref: AgentRef | None = None
        self._last: ReceivedMessage | None = None

    @classmethod
    async def spawn(
        cls,
        system: MessageSystem,
        *,
        name: str | None = None,
        reply: Callable[[Any], Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        mailbox: MailboxConfig | None = None,
    ) -> TestProbe:
        """Start a probe agent in ``system`` and return the probe.

        Args:
            name: a name to register the probe under (so that code which looks agents up by
                name finds it).
            reply: how the probe answers calls: the reply is ``reply(payload)``; if it raises,
                the caller gets ``CallFailed`` with that error as its cause, as from a callee
                that crashed (the probe itself keeps running). ``None``: calls wait for the
                test to answer them with :meth:`reply` or :meth:`fail`.
            timeout: the default timeout of every expectation, in seconds of Trio time.
            mailbox: the probe's mailbox (bounded, to test backpressure on a sender).

        Raises:
            InvalidConfig: an argument is out of range or of the wrong type.
            DuplicateAgent: ``name`` is taken.
            SystemClosed: the system is shutting down.
        """
        check_instance("system", system, MessageSystem)
        probe = cls(reply=reply, timeout=timeout)
        probe._ref = await system.spawn(_ProbeAgent, probe, name=name, mailbox=mailbox)
        return probe

    def __repr__(self) -> str:
        where = "not started" if self._ref is None else repr(self._ref.id)
        return f"<TestProbe {where}: {len(self._received)} received, {len(self._queue)} queued>"

    # -- what the probe is and has --------------------------------------------------------

    @property
    def ref(self) -> AgentRef:
        """The probe's ref, to hand to the agents under test.

        Raises:
            RuntimeError: the probe was built directly and never spawned.
        """
        if self._ref is None:
            raise RuntimeError("this probe has no agent: create it with TestProbe.spawn")
        return self._ref

    @property
    def id(self) -> AgentId:
        """The probe agent's id (what ``ctx.sender_id`` of its messages would be)."""
        return self.ref.id

    @property
    def received(self) -> tuple[ReceivedMessage, ...]:
        """Every message received so far, expected or not, oldest first."""
        return tuple(self._received)

    @property
    def queued(self) -> int:
        """Messages received that no expectation has taken yet."""
        return len(self._queue)

    @property
    def last(self) -> ReceivedMessage:
        """The message the latest expectation returned (for its sender, or to answer it).

        Raises:
            ExpectationFailed: no expectation has returned a message yet.
        """
        if self._last is None:
            raise ExpectationFailed("no message has been expected yet")
        return self._last

    # -- expectations ---------------------------------------------------------------------

    @overload
    async def expect(
        self, matcher: type[T], *, kind: MessageKind | None = None, timeout: float | None = None
    ) -> T: ...

    @overload
    async def expect(
        self,
        matcher: object = ANYTHING,
        *,
        kind: MessageKind | None = None,
        timeout: float | None = None,
    ) -> Any: ...

    async def expect(
        self,
        matcher: object = ANYTHING,
        *,
        kind: MessageKind | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Take the next message and check it; return its payload.

        ``matcher`` is a class (or a tuple of them) the payload must be an instance of, a
        predicate it must satisfy, or a value it must equal; by default anything passes.
        ``kind`` also requires it to have come as a call, a cast or an info.

        Raises:
            ExpectationFailed: nothing arrived within ``timeout`` seconds (the probe's default
                if ``None``), or the next message does not match.
        """
        received = await self._next(self._deadline(timeout), matcher)
        if not (matches(matcher, received.payload) and (kind is None or received.kind is kind)):
            wanted = describe(matcher) + ("" if kind is None else f" ({kind.value})")
            raise ExpectationFailed(f"expected {wanted}, got {received!r}")
        self._last = received
        return received.payload

    async def expect_n(
        self, count: int, matcher: object = ANYTHING, *, timeout: float | None = None
    ) -> list[Any]:
        """Take the next ``count`` messages, each of which must match ``matcher``; return their
        payloads in arrival order (Akka's ``receiveN``). The timeout is for all of them.

        Raises:
            ExpectationFailed: fewer arrived in time, or one does not match.
            InvalidConfig: ``count`` is not an int >= 0.
        """
        check_count("count", count, minimum=0)
        deadline = self._deadline(timeout)
        payloads = []
        for position in range(count):
            received = await self._next(deadline, matcher, f"message {position + 1} of {count}")
            if not matches(matcher, received.payload):
                raise ExpectationFailed(
                    f"message {position + 1} of {count}: expected {describe(matcher)},"
                    f" got {received!r}"
                )
            self._last = received
            payloads.append(received.payload)
        if not count:
            await trio.lowlevel.checkpoint()
        return payloads

    async def fish_for(self, matcher: object, *, timeout: float | None = None) -> Any:
        """Take messages until one matches and return its payload; the others are discarded
        from the queue (they stay in :attr:`received`). For tests that care about one message
        among chatter they need not spell out.

        Raises:
            ExpectationFailed: no matching message arrived within the timeout.
        """
        deadline = self._deadline(timeout)
        while True:
            received = await self._next(deadline, matcher)
            if matches(matcher, received.payload):
                self._last = received
                return received.payload

    async def expect_no_message(self, *, within: float = DEFAULT_QUIET_PERIOD) -> None:
        """Check that nothing arrives for ``within`` seconds (nor is already queued).

        Under a jumping ``MockClock`` the quiet period passes as soon as every task is idle.

        Raises:
            ExpectationFailed: a message arrived, or was already waiting.
            InvalidConfig: ``within`` is not a positive number of seconds.
        """
        check_seconds("within", within)
        with trio.move_on_after(within):
            await trio.lowlevel.checkpoint()
            while not self._queue:
                await self._arrival.park()
        if self._queue:
            raise ExpectationFailed(
                f"expected no message within {within} s, got {self._queue[0]!r}"
            )

    # -- calls and monitors ---------------------------------------------------------------

    async def reply(self, value: Any) -> bool:
        """Answer the call that the latest expectation returned (Akka's ``probe.reply``).

        Returns False if the caller had given up already.

        Raises:
            ExpectationFailed: that message is not a call waiting for the test's answer.
            ReplyAlreadySent: it was answered before.
        """
        return await self._deferred().reply(value)

    async def fail(self, error: BaseException) -> bool:
        """Make the call that the latest expectation returned raise ``CallFailed`` in its
        caller, with ``error`` as its ``__cause__`` (as a deferred reply's ``fail`` does).

        Returns and raises as :meth:`reply`.
        """
        return await self._deferred().fail(error)

    async def watch(self, ref: AgentRef) -> None:
        """Monitor ``ref``: when its agent stops for good, a ``Down`` arrives at the probe.

        Raises:
            InvalidConfig: ``ref`` is not an agent's ref (a pool's, say).
        """
        outcome = await self.ref.call(_Watch(ref), timeout=self._timeout)
        if isinstance(outcome, Exception):
            raise outcome

    async def expect_terminated(self, ref: AgentRef, *, timeout: float | None = None) -> Down:
        """Expect the ``Down`` of an agent the probe :meth:`watch`\\ es (Akka's
        ``expectTerminated``): the next message must be it.

        Raises:
            ExpectationFailed: it did not come in time, or another message came first.
        """
        down: Down = await self.expect(
            lambda message: isinstance(message, Down) and message.ref == ref,
            kind=MessageKind.INFO,
            timeout=timeout,
        )
        return down

    # -- internals ------------------------------------------------------------------------

    def _record(self, envelope: Envelope, deferred: DeferredReply | None = None) -> None:
        received = ReceivedMessage(envelope, trio.current_time(), deferred)
        self._received.append(received)
        self._queue.append(received)
        self._arrival.unpark_all()

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self._timeout
        else:
            check_seconds("timeout", timeout)
        return trio.current_time() + timeout

    async def _next(self, deadline: float, matcher: object, what: str = "") -> ReceivedMessage:
        """The oldest queued message, waiting for one until ``deadline``; always checkpoints."""
        await trio.lowlevel.checkpoint()
        with trio.move_on_at(deadline):
            while not self._queue:
                await self._arrival.park()
        if not self._queue:
            label = f" ({what})" if what else ""
            raise ExpectationFailed(
                f"timed out waiting for {describe(matcher)}{label};"
                f" {len(self._received)} received in all, none left unexpected"
            )
        return self._queue.popleft()

    def _deferred(self) -> DeferredReply:
        deferred = self.last.deferred
        if deferred is None:
            raise ExpectationFailed(f"{self.last!r} is not a call waiting for the test's answer")
        return deferred
