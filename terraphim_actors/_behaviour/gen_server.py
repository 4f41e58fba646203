"""The gen_server behaviour: how an ``Agent`` instance is served, one message at a time.

The cell (OTP's proc_lib) runs an instance and settles how it ends; this module is what the
instance does meanwhile (OTP's ``gen_server.erl``): it takes messages from the mailbox in
batches, drops the expired and the duplicates, dispatches casts, calls and infos to their
handlers, answers callers, asks ``on_error`` what a crash means, and acknowledges or fails
each message with delivery. The loop is the hot path of the library: its per-message code is
kept to the attribute loads and calls it needs, and it reads the clock once per batch.
"""

from __future__ import annotations

import functools
import logging
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, cast

import trio

from supervisor import EscalatedFailure, FinalExit

from .._core.bounded_repr import LazyText, bounded_repr
from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope, MessageKind
from .._core.notifications import ExitReason, StopReason
from .._core.protocols import RUN_AGAIN, RunAgain
from .._core.reply import ReplyHandle
from .._delivery.dead_letters import DeadLetterReason
from .._primitives.dedup import NO_REPLY
from .._primitives.mailbox import Mailbox
from .._process.cell import AgentCell
from .._process.context_vars import inherited_deadline
from ..errors import (
    AgentStartFailed,
    CallFailed,
    DeliveryFailed,
    HandlerTimeout,
    MailboxClosed,
    NonRetryable,
    UnhandledMessage,
)
from .agent import (
    Agent,
    Context,
    Directive,
    NotHandled,
    format_payload,
    on_start_takes_context,
)
from .agent_checks import warn_cast_returned
from .system_api import SystemApi

__all__ = ["GenServer", "GenServerBehaviour"]

logger = logging.getLogger("terraphim_actors")

EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE
# Read once: on Python 3.11 an enum member read from its class goes through the enum's
# metaclass, several times dearer than a global, and the loop reads these per message.
_CAST = MessageKind.CAST
_CALL = MessageKind.CALL

#: Messages served back to back before the loop yields to other tasks, so that a busy agent
#: pays for one scheduler round per batch rather than one per message.
_BATCH = 128


class _OneSlot:
    """An object held by one slot alone: what ``sys.getrefcount`` says of it, read through
    the slot, is what it says of a context only its server holds (measured, not assumed: the
    interpreter's own references differ between versions)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = object()


#: ``sys.getrefcount`` (None where the interpreter counts no references: a sleeper then keeps
#: its context), and what it says of a context that only its server holds.
_refcount: Callable[[object], int] | None = getattr(sys, "getrefcount", None)
_probe = _OneSlot()
_HELD_BY_ITS_SERVER_ALONE = None if _refcount is None else _refcount(_probe.held)
del _probe

#: The keyword arguments of every agent built with none (read-only: one for all of them).
_NO_KWARGS: Mapping[str, Any] = types.MappingProxyType({})

#: A handler as the loop calls it: ``handler(agent, payload, context)``.
_Handler = Callable[[Any, Any, Context], Awaitable[Any]]
#: ``handle_cast``, ``handle_call`` and ``handle_info``, as the loop calls them.
_Handlers = tuple[_Handler, _Handler, _Handler]


@functools.lru_cache(maxsize=1024)
def _class_handlers(agent_class: type[Agent]) -> _Handlers:
    """An agent class's handlers, as functions of the class: one tuple per class, where the
    methods bound to each instance (three and their tuple) kept 256 bytes of every idle agent.

    A bounded cache rather than a weak one: a handler that calls ``super()`` refers to its
    class, so a weak table's entry would keep its own key alive."""
    return agent_class.handle_cast, agent_class.handle_call, agent_class.handle_info


def _handlers_of(agent: Agent) -> _Handlers:
    """``agent``'s handlers as ``handler(agent, payload, context)``: its class's functions,
    shared by all its instances, unless the instance has one of its own (or the class's
    changed since they were cached)."""
    # A class is hashable; mypy checks it against ``Hashable`` by its instances' ``__hash__``.
    handlers = _class_handlers(type(agent))  # type: ignore[arg-type]
    cast, call, info = handlers
    if (
        getattr(agent.handle_cast, "__func__", None) is cast
        and getattr(agent.handle_call, "__func__", None) is call
        and getattr(agent.handle_info, "__func__", None) is info
    ):
        return handlers
    return (
        _bound_handler(agent.handle_cast),
        _bound_handler(agent.handle_call),
        _bound_handler(agent.handle_info),
    )


def _bound_handler(handler: Callable[[Any, Context], Awaitable[Any]]) -> _Handler:
    """A handler set on the instance itself, called as the class's are."""

    def call(_agent: Any, payload: Any, context: Context) -> Awaitable[Any]:
        return handler(payload, context)

    return call


class GenServerBehaviour:
    """How a cell starts instances of one agent class: ``agent_class(*args, **kwargs)`` served
    by a :class:`GenServer` (the ``Behaviour`` a cell runs, one per agent, kept across restarts).

    ``system`` is what an instance's ``Context`` offers as ``ctx.system``.
    """

    __slots__ = ("agent_class", "args", "handler_timeout", "hibernate_after", "kwargs", "system")

    def __init__(
        self,
        agent_class: type[Agent],
        args: tuple[Any, ...],
        handler_timeout: float | None,
        system: SystemApi,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.system = system
        self.agent_class = agent_class
        self.args = args
        # Not the caller's empty dict: ``spawn(Agent)`` makes one for its ``**kwargs``, which
        # kept here would be 64 bytes of every agent, asleep or awake.
        self.kwargs: Mapping[str, Any] = kwargs if kwargs else _NO_KWARGS
        #: Seconds a handler may run before it fails with ``HandlerTimeout`` (None: no limit).
        self.handler_timeout = handler_timeout
        #: Seconds an instance idles before it hibernates (None: never): the class's own.
        self.hibernate_after: float | None = agent_class.hibernate_after

    def build(self, cell: AgentCell) -> GenServer:
        """A fresh instance, its ``on_start`` not run yet (see :attr:`GenServer.begin`): the
        constructor runs now, in the caller's task.

        Raises:
            AgentStartFailed: the constructor raised.
        """
        context = Context(cell, self.system)
        try:
            agent = self.agent_class(*self.args, **self.kwargs)
        except Exception as error:
            raise _start_failed(cell.id, error) from error
        server = GenServer(cell, agent, context, self)
        context._server = server
        return server


def _start_failed(agent: AgentId, error: Exception) -> AgentStartFailed:
    return AgentStartFailed(f"{agent!r} failed to start: {bounded_repr(error)}")


class GenServer:
    """One ``Agent`` instance served by the gen_server loop (the cell's ``Instance``)."""

    __slots__ = (
        "_behaviour",
        "_cell",
        "_context",
        "_deferred",
        "_first_call",
        "_handler_scope",
        "agent",
    )

    def __init__(
        self,
        cell: AgentCell,
        agent: Agent,
        context: Context,
        behaviour: GenServerBehaviour,
    ) -> None:
        self._cell = cell
        self.agent = agent
        #: The handlers' context; let go of while the instance sleeps if nothing else holds it.
        self._context: Context | None = context
        #: What built it, whose ``handler_timeout`` and ``hibernate_after`` it serves with.
        self._behaviour = behaviour
        #: Cancelled to cut short the handler of a call whose caller gave up (while serving).
        self._handler_scope: trio.CancelScope | None = None
        #: The call that ended the loop without a scope, for the loop with one to serve first.
        self._first_call: Envelope | None = None
        #: Calls the instance deferred, failed if it ends before answering them: a dict used
        #: as an ordered set, made at the first deferral (most agents never defer one, and an
        #: empty dict kept by each of a million sleepers is 64 MB).
        self._deferred: dict[ReplyHandle, None] | None = None

    def __repr__(self) -> str:
        return f"<GenServer {type(self.agent).__name__} {self._cell.id!r}>"

    @property
    def cleanup(self) -> Callable[[ExitReason], Awaitable[None]] | None:
        """``on_stop``, unless the class keeps the default (a no-op: no scope is spent on it).
        Bound when asked, not kept: a bound method kept by every instance of a class with an
        ``on_stop`` would be 64 bytes of each, asleep or awake."""
        agent = self.agent
        return agent.on_stop if type(agent).on_stop is not Agent.on_stop else None

    @property
    def begin(self) -> Callable[[], Awaitable[None]] | None:
        """The agent's ``on_start``, which raises ``AgentStartFailed`` for what it raises;
        None while it keeps Agent's own, which does nothing: no coroutine is made and run
        for nothing, and its start need not wait for its task (see ``AgentCell.prepare``)."""
        if getattr(self.agent.on_start, "__func__", None) is Agent.on_start:
            return None
        return self._begin

    async def _begin(self) -> None:
        on_start = self.agent.on_start
        try:
            if on_start_takes_context(self._behaviour.agent_class):
                await on_start(self._context)
            else:
                await on_start()
        except Exception as error:
            raise _start_failed(self._cell.id, error) from error

    def format_message(self, payload: Any) -> str:
        return format_payload(self.agent, payload)

    def remember_deferred(self, handle: ReplyHandle) -> None:
        if self._deferred is None:
            self._deferred = {}
        self._deferred[handle] = None

    def forget_deferred(self, handle: ReplyHandle) -> None:
        if self._deferred is not None:
            self._deferred.pop(handle, None)

    def settle(self, reason: ExitReason) -> None:
        """Fail the calls the instance deferred and did not answer: their callers hear that
        the agent stopped."""
        deferred, self._deferred = self._deferred, None
        if deferred is None:
            return
        cell = self._cell
        stopped = cell.stopped_error
        for handle in deferred:
            # Not if the handler answered it through ``ctx.caller``; but if its caller gave up,
            # so that resends of it (exactly-once) hear of the stop too.
            if handle.pending:
                # Acknowledged when its handler returned, failed now: the books say so.
                cell.system.delivery.deferred_call_stopped()
            if handle.pending or handle.abandoned:
                handle.fail(stopped(reason))

    def owes_replies(self) -> bool:
        return bool(self._deferred)

    async def hibernate(self) -> None:
        """The instance is to sleep: its ``on_hibernate``, if it has one. The context lets go
        of the last message, which a sleeper has no reason to keep; then the instance lets go
        of the context itself, unless the agent holds it (kept from ``on_start``, say): only
        who holds a context can tell a new one from it, and a sleeper is smaller without."""
        context = self._context
        assert context is not None
        context._envelope = None
        del context
        agent = self.agent
        if type(agent).on_hibernate is not Agent.on_hibernate:
            await agent.on_hibernate()
        if _refcount is not None and _refcount(self._context) == _HELD_BY_ITS_SERVER_ALONE:
            self._context = None

    async def wake(self) -> None:
        """The instance serves again after sleeping: its ``on_wake``, if it has one."""
        agent = self.agent
        if type(agent).on_wake is not Agent.on_wake:
            await agent.on_wake()

    def run(self) -> Coroutine[Any, Any, ExitReason | RunAgain | None]:
        """The gen_server loop: one message at a time until asked to stop or crashed; or,
        with a ``hibernate_after``, until idle that long with nothing alive of its own
        (returns None: the cell may let it hibernate).

        Messages are served in batches: the loop takes what is waiting without a checkpoint and
        yields once per batch (or when a handler awaits); the clock is read at the start and the
        end of a batch, not per message. The handlers are looked up once per run: wrapped in a
        time limit if the agent has one, as they are otherwise.

        Without a scope until the first call comes: only a call's handler is ever cut short,
        and a cancel scope is a fifth of an idle agent (and costs more than a scheduler round
        to enter), so an agent that takes no call never has one. The first call ends that loop
        with ``RUN_AGAIN``, and the cell's next ``run`` serves it under the scope. The loop is
        returned, not awaited here: an idle agent's task keeps one frame fewer.
        """
        agent = self.agent
        if self._context is None:  # woken, having let go of it
            self._context = Context(self._cell, self._behaviour.system)
            self._context._server = self
        limit = self._behaviour.handler_timeout
        handlers = _handlers_of(agent)
        if limit is not None:
            cell_id = self._cell.id
            handlers = (
                _limited(handlers[0], limit, cell_id),
                _limited(handlers[1], limit, cell_id),
                _limited(handlers[2], limit, cell_id),
            )
        if self._first_call is None:
            return self._serve_messages(handlers, scoped=False)
        return self._serve_calls(handlers)

    async def _serve_calls(self, handlers: _Handlers) -> ExitReason | None:
        """Serve messages, the call that ended the unscoped loop first, each within a scope
        that ``call_abandoned`` can cancel."""
        first, self._first_call = self._first_call, None
        try:
            while True:
                # ``call_abandoned`` cancels this scope to cut short a call nobody waits for. A
                # cancelled scope stays cancelled: one per such call, not one per message.
                with trio.CancelScope() as abandoning:
                    self._handler_scope = abandoning
                    taken, first = first, None
                    reason = await self._serve_messages(handlers, first=taken)
                    assert reason is not RUN_AGAIN
                    if reason is not None:
                        return reason
                    if self._handler_scope is abandoning:  # not cut short: idle
                        return None
                self._handler_scope = None
                if abandoning.cancelled_caught:
                    self._settle_abandoned()
        finally:
            self._handler_scope = None

    async def _serve_messages(
        self, handlers: _Handlers, *, scoped: bool = True, first: Envelope | None = None
    ) -> ExitReason | RunAgain | None:
        """Serve messages (``first`` first) until the instance is to stop (returns why) or
        ``call_abandoned`` has cancelled the handler scope (returns None); not ``scoped``,
        until a call comes (returns ``RUN_AGAIN``, the call taken from the mailbox and kept
        for :meth:`_serve_calls`, unhandled)."""
        handle_cast, handle_call, handle_info = handlers
        instance = self.agent
        context = self._context
        assert context is not None  # made again by ``run``
        cell = self._cell
        mailbox = cell.mailbox
        # Its circuit and windows live on the endpoint, kept across the cell's instances.
        endpoint = cell.endpoint
        delivery = cell.system.delivery
        ledger = delivery.ledger
        counts_only = ledger.counts_only  # then acknowledging only moves its count
        # A durable journal counts each handler run before it begins, several in one commit
        # (``_delivery/runs.py``); none: one local test.
        journaling = delivery.journaling
        clock = cell.system.current_time
        instruments = cell.system.instruments
        # Instruments are installed with the system, so none now means none for good: then the
        # hooks cost one local truth test per message, not a dict lookup each.
        observed = bool(instruments)
        hibernate_after = self._behaviour.hibernate_after
        # Messages served since ``batch_started``: only time in which messages were served is
        # recorded, so that an agent shows no activity (and keeps no floats for it) until it
        # has served one.
        served = 0
        batch_started = clock()
        try:
            # ``first`` was taken from the mailbox already: served even by a draining instance
            # whose mailbox it emptied.
            while (
                cell._stop_requested is None
                or first is not None
                or (cell._draining and len(mailbox))
            ):
                if scoped and self._handler_scope is None:  # not ``cancel_called``: it reads
                    return None  # the clock
                if served >= _BATCH:
                    # The batch so far is recorded before the yield: the time others then take
                    # is not this agent's processing.
                    yielding_at = clock()
                    mailbox.record_processing_time(yielding_at - batch_started, yielding_at)
                    served = 0
                    await trio.lowlevel.checkpoint()
                    batch_started = clock()
                if first is None:
                    envelope = mailbox.try_receive()
                else:
                    envelope, first = first, None
                if envelope is None:
                    idle_from = clock()
                    if served:
                        mailbox.record_processing_time(idle_from - batch_started, idle_from)
                        served = 0
                    try:
                        if hibernate_after is None or cell.system.closing:
                            await mailbox.wait_for_arrival()  # request_stop interrupts it
                        elif (
                            not await _arrival_by(mailbox, idle_from + hibernate_after)
                            and cell.can_hibernate()
                        ):
                            return None
                    except MailboxClosed:
                        break
                    batch_started = clock()
                    continue
                if not scoped and envelope.kind is _CALL:
                    self._first_call = envelope  # to be served within a scope that can cut
                    return RUN_AGAIN  # it short
                served += 1
                # Expired: a call once its caller gave up, anything else past its timeout.
                handle = envelope.reply
                if (
                    handle.abandoned
                    if handle is not None
                    else envelope.created_at + envelope.options.timeout < clock()
                ):
                    if journaling:
                        delivery.not_run(endpoint, envelope)
                    delivery.undelivered(envelope, DeadLetterReason.EXPIRED, _expiry(envelope))
                    continue
                if envelope.options.guarantee is EXACTLY_ONCE and delivery.suppress_duplicate(
                    endpoint, envelope
                ):
                    if journaling:
                        delivery.not_run(endpoint, envelope)
                    continue
                cell._in_hand = envelope
                context._envelope = envelope
                if journaling:
                    # With the runs of the kept messages waiting behind it, in one commit.
                    await delivery.started(endpoint, envelope, mailbox.waiting)
                reply = NO_REPLY
                if observed and "handler_started" in instruments:
                    instruments.call("handler_started", cell.id, envelope)
                try:
                    kind = envelope.kind
                    if kind is _CAST:
                        # A value returned from a cast reaches nobody: say so, once per class.
                        returned = await handle_cast(instance, envelope.payload, context)
                        if returned is not None:
                            warn_cast_returned(type(instance), returned)
                    elif kind is _CALL:
                        reply = await self._serve_call(handle_call, context, envelope)
                    else:
                        await handle_info(instance, envelope.payload, context)
                except _FailedThroughCaller:  # the handler returned, having failed the call
                    context._retry_after = None
                    if observed and "handler_finished" in instruments:
                        instruments.call("handler_finished", cell.id, envelope, None)
                    delivery.failed_through_caller(endpoint, envelope)
                except NotHandled as not_handled:
                    context._retry_after = None
                    if observed and "handler_finished" in instruments:
                        instruments.call("handler_finished", cell.id, envelope, not_handled)
                    delivery.record_neither(endpoint)
                    unhandled = UnhandledMessage(f"{type(instance).__name__} does not handle it")
                    delivery.undelivered(envelope, DeadLetterReason.UNHANDLED, unhandled)
                except Exception as crash:
                    context._retry_after = None  # a crash, whatever the handler said before
                    if observed and "handler_finished" in instruments:
                        instruments.call("handler_finished", cell.id, envelope, crash)
                    # A request that will fail the same way again (bad, not the agent's
                    # fault) says nothing of the agent's health: the circuit does not count it.
                    rejected = _not_retryable(crash, instance.no_retry_on)
                    if rejected:
                        delivery.record_neither(endpoint)
                    else:
                        delivery.record_failure(endpoint)
                    directive = self._decide(crash, envelope)
                    if rejected:
                        why = DeadLetterReason.REJECTED
                    elif directive is Directive.RESUME:
                        why = DeadLetterReason.HANDLER_CRASHED
                    else:
                        return crash  # settled as the instance ends
                    cell._in_hand = None
                    delivery.undelivered(envelope, why, _failure(cell.id, crash))
                    if directive is not Directive.RESUME:
                        return crash
                except BaseException as cancelled:  # from outside: its instance, or its caller
                    if observed and "handler_finished" in instruments:
                        instruments.call("handler_finished", cell.id, envelope, cancelled)
                    raise
                else:
                    if observed and "handler_finished" in instruments:
                        instruments.call("handler_finished", cell.id, envelope, None)
                    if (
                        endpoint.admission is None
                        and envelope.options.guarantee is not EXACTLY_ONCE
                    ):
                        # All that acknowledging takes, mostly.
                        if counts_only:
                            ledger.acknowledged_count += 1
                        else:
                            ledger.acknowledged(envelope)
                    elif context._retry_after is not None:
                        # ``ctx.retry_after`` gave the endpoint its gate: never the case above.
                        delivery.retry_later(endpoint, envelope, context._retry_after)
                        context._retry_after = None
                    else:
                        delivery.acknowledge(endpoint, envelope, reply)
                cell._in_hand = None
        finally:
            if served:
                stopped_at = clock()
                mailbox.record_processing_time(stopped_at - batch_started, stopped_at)
        return cell._stop_requested or StopReason.NORMAL

    def _decide(self, crash: Exception, envelope: Envelope) -> Directive:
        """Ask the instance's ``on_error`` what its crash means (RESTART if that raises), and
        prepare the instance's end for a STOP or an ESCALATE."""
        cell = self._cell
        try:
            directive = self.agent.on_error(crash, envelope.payload, cast(Context, self._context))
            if not isinstance(directive, Directive):
                raise TypeError(f"on_error returned {bounded_repr(directive)}, not a Directive")
        except Exception as error:
            logger.error("on_error of %r raised; restarting it", cell.id, exc_info=error)
            directive = Directive.RESTART
        logger.error(
            "agent %r crashed handling %s (%s)",
            cell.id,
            LazyText(cell.describe, envelope),
            directive.value,
            exc_info=crash,
        )
        if directive is Directive.STOP:
            cell.exit_as(FinalExit, final=True)
        elif directive is Directive.ESCALATE:
            cell.exit_as(EscalatedFailure, final=False)
        return directive

    async def _serve_call(self, handle_call: _Handler, context: Context, envelope: Envelope) -> Any:
        """Run ``handle_call`` (as the loop looked it up) and answer the caller; returns the
        reply it gave (``NO_REPLY`` if it deferred, answered through ``ctx.caller``, or nobody
        waited)."""
        handle = envelope.reply
        assert handle is not None
        context._deferred = False
        handle.serving = self
        token = inherited_deadline.set(envelope.deadline)
        try:
            result = await handle_call(self.agent, envelope.payload, context)
        except Exception as error:
            # A handler may have answered (or deferred and answered) before it raised.
            if handle.pending:
                wrapper = UnhandledMessage if isinstance(error, NotHandled) else CallFailed
                cell = self._cell
                handle.fail(_wrap(wrapper, cell.id, error, cell.format_message(envelope.payload)))
            raise
        finally:
            inherited_deadline.reset(token)
        if context._deferred:
            return NO_REPLY
        if handle.pending:
            handle.reply(result)
            return result
        if handle.replied:
            return handle.value  # answered through ctx.caller
        if handle.failed:
            raise _FailedThroughCaller
        return result  # its caller gave up: kept for a resend under exactly-once

    def call_abandoned(self, handle: object) -> None:
        """The caller of a call this instance took in gave up: if its handler is still
        running, cancel it (nobody waits for its answer), unless the agent finishes abandoned
        calls.

        An exactly-once call runs to its end: its answer is kept for a resend of it, which is
        what a caller that gave up is expected to send, and a resend must not run it again.
        """
        in_hand = self._cell._in_hand
        scope = self._handler_scope
        if (
            in_hand is not None
            and in_hand.reply is handle
            and scope is not None
            and not self.agent.finish_abandoned_calls
            and in_hand.options.guarantee is not EXACTLY_ONCE
        ):
            scope.cancel()
            self._handler_scope = None

    def _settle_abandoned(self) -> None:
        """Settle the call whose handler ``call_abandoned`` cut short: failed, and counted
        against the circuit breaker once (the caller's ``CallTimeout`` already counts)."""
        cell = self._cell
        envelope, cell._in_hand = cell._in_hand, None
        assert envelope is not None
        assert envelope.reply is not None
        cell.system.delivery.abandoned(cell.endpoint, envelope)
        logger.info(
            "cancelled %r's handler of %s: its caller gave up",
            cell.id,
            LazyText(cell.describe, envelope),
        )


async def _arrival_by(mailbox: Mailbox, deadline: float) -> bool:
    """Wait for a message (or a stop) until the Trio time ``deadline``; False if none came."""
    with trio.CancelScope(deadline=deadline) as waiting:
        await mailbox.wait_for_arrival()
    return not waiting.cancelled_caught


def _limited(handler: _Handler, limit: float, agent: AgentId) -> _Handler:
    """``handler`` cancelled once it has run ``limit`` seconds, failing with HandlerTimeout.

    Only an agent with a limit pays for the cancel scope: the loop wraps its handlers once per
    instance, and calls them directly otherwise.
    """
    name = getattr(handler, "__name__", "handler")

    async def limited(instance: Any, payload: Any, context: Context) -> Any:
        with trio.CancelScope(deadline=trio.current_time() + limit) as scope:
            return await handler(instance, payload, context)
        # Only reached when the scope cancelled the handler: the limit has passed.
        assert scope.cancelled_caught
        raise HandlerTimeout(f"{agent!r}'s {name} ran past its handler_timeout ({limit:g} s)")

    return limited


class _FailedThroughCaller(Exception):
    """A call's handler returned after failing the call through ``ctx.caller.fail``."""


def _expiry(envelope: Envelope) -> DeliveryFailed:
    """The error (and dead-letter detail) of an expired message."""
    if envelope.reply is not None:
        return DeliveryFailed("the caller gave up before it was handled")
    timeout = envelope.options.timeout
    return DeliveryFailed(f"its timeout ({timeout} s) passed before it was handled")


def _not_retryable(error: Exception, no_retry_on: tuple[type[BaseException], ...]) -> bool:
    """Whether ``error`` will fail the same way again: listed in ``no_retry_on``, or with a
    ``NonRetryable`` anywhere in its chain of causes and contexts."""
    if isinstance(error, no_retry_on):
        return True
    seen: set[int] = set()
    links: list[BaseException | None] = [error]
    while links:
        link = links.pop()
        if link is None or id(link) in seen:
            continue
        if isinstance(link, NonRetryable):
            return True
        seen.add(id(link))
        links += (link.__cause__, link.__context__)
    return False


def _failure(agent: AgentId, error: Exception) -> DeliveryFailed:
    """The error (and dead-letter detail) of a message whose handler raised ``error``."""
    return DeliveryFailed(f"{agent!r} raised {bounded_repr(error)} while handling it")


def _wrap(
    error_type: type[CallFailed], agent: AgentId, error: Exception, message: str
) -> CallFailed:
    wrapped = error_type(
        f"{agent!r} raised {bounded_repr(error)} while handling the call {message}"
    )
    wrapped.__cause__ = error
    return wrapped
