"""What users subclass: :class:`Agent`, and the :class:`Context` its handlers receive."""

from __future__ import annotations

import enum
import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from supervisor import RestartType

from .._core.bounded_repr import REPR_LIMIT, bounded_repr, shorten
from .._core.checks import check_count, check_instance, check_seconds
from .._core.ids import AgentId, MessageId
from .._core.messages import DeliveryGuarantee, Envelope
from .._core.notifications import ExitReason, MonitorRef, StopReason
from .._core.reply import ReplyHandle
from .._core.threads import check_thread
from .._primitives.timers import Timer
from .._process.lifecycle import CellState
from ..errors import AgentStopped, CallFailed, InvalidConfig, ReplyAlreadySent, SystemClosed
from .refs import AgentRef

if TYPE_CHECKING:
    from .._process.cell import AgentCell
    from .gen_server import GenServer
    from .system_api import SystemApi

__all__ = ["Agent", "Caller", "Context", "DeferredReply", "Directive", "NotHandled"]


class Directive(enum.Enum):
    """What becomes of an agent whose handler raised (Akka's supervisor directives); the
    message that failed is settled as failed whatever the directive."""

    #: Keep the instance and its state; take the next message. No restart is spent.
    RESUME = "resume"
    #: Crash: the supervisor starts a fresh instance (the default, as in OTP).
    RESTART = "restart"
    #: Stop for good with the error as the reason, as ``system.stop`` would.
    STOP = "stop"
    #: Make the agent's supervisor fail, as when it exceeds its restart intensity.
    ESCALATE = "escalate"


class NotHandled(Exception):
    """Raised by the default handlers: the message becomes an ``UNHANDLED`` dead letter.

    A handler may raise it too (or call ``super()``) for a message it does not understand;
    the agent keeps running, as it would after any message it chose to ignore.
    """


class Agent:
    """Base class of agents: a gen_server whose handlers run one message at a time.

    Each start (the first, and every restart) builds a fresh instance from the class and the
    arguments given to ``spawn``, then awaits :meth:`on_start`. Messages are handed out by
    priority, then in order of arrival. A handler that raises crashes the agent: a caller of the
    failing call gets the error as ``CallFailed`` at once, and the agent's supervisor starts a
    fresh instance, which finds the messages that were waiting in the mailbox. :meth:`on_error`
    (or ``resume_on`` and ``stop_on``) can decide otherwise per error.
    """

    #: Errors after which the default :meth:`on_error` resumes the agent (``isinstance``).
    resume_on: tuple[type[BaseException], ...] = ()
    #: Errors after which the default :meth:`on_error` stops it for good (checked first).
    stop_on: tuple[type[BaseException], ...] = ()
    #: Errors that will fail the same way again: the message is never redelivered (a cast or
    #: info is a ``REJECTED`` dead letter at once), as if they were ``errors.NonRetryable``.
    no_retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds a ``handle_call``, ``handle_cast`` or ``handle_info`` may run before it is
    #: cancelled and fails with ``errors.HandlerTimeout`` (through :meth:`on_error` like any
    #: error); ``None``, the default, sets no limit. ``spawn(..., handler_timeout=...)`` wins.
    handler_timeout: float | None = None
    #: Whether a call's handler runs on once its caller has given up (``CallTimeout``, or the
    #: caller's own cancel scope). By default it is cancelled, as nobody waits for its answer.
    finish_abandoned_calls: bool = False
    #: Seconds idle (nothing waiting, no handler running, no ``ctx.start_soon`` task alive)
    #: after which the agent hibernates: it gives up its task and keeps its name, ref,
    #: mailbox and this instance with its state; a message wakes it. ``None``, the default,
    #: never hibernates; ``spawn(..., hibernate_after=...)`` wins.
    hibernate_after: float | None = None

    if TYPE_CHECKING:
        # Either ``on_start(self)`` or ``on_start(self, ctx)``: a subclass's type checker
        # accepts both overrides.
        on_start: Callable[..., Awaitable[None]]
    else:

        async def on_start(self) -> None:
            """Prepare state before the first message; define it as ``on_start(self, ctx)``
            to get the :class:`Context` (timers, monitors, ``ctx.self``, ``ctx.system``), as
            OTP's ``init`` does. What it sets up is settled when the instance ends, as if a
            handler had set it up. Raising here fails the ``spawn``; during a restart it counts
            as another crash, and the supervisor tries again."""

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        """Answer a call: the return value is the reply (unless the reply was deferred)."""
        raise NotHandled(message)

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        """Act on a fire-and-forget message."""
        raise NotHandled(message)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        """Act on a system notification (``Down``, timers, lifecycle) or a plain send."""
        raise NotHandled(message)

    def format_message(self, payload: Any) -> str:
        """What the library logs and prints of a message to this agent (OTP's
        ``format_status``): crash logs, ``CallTimeout`` and ``CallFailed`` messages, dead-letter
        logs. Override it to redact prompts with secrets or personal data; the default is the
        bounded repr. If it raises or returns a non-``str``, the bounded repr is used instead,
        and what it returns is cut to the same bounded length.
        """
        return bounded_repr(payload)

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        """Decide what becomes of this agent now that a handler raised ``error`` handling
        ``payload``. The default stops on ``stop_on``, resumes on ``resume_on``, and restarts
        otherwise. If this method raises, the agent restarts."""
        if isinstance(error, self.stop_on):
            return Directive.STOP
        if isinstance(error, self.resume_on):
            return Directive.RESUME
        return Directive.RESTART

    async def on_stop(self, reason: ExitReason) -> None:
        """Release resources. ``reason`` is a ``StopReason`` or the exception it crashed with.

        Runs shielded from cancellation, for at most the agent's shutdown time.
        """

    async def on_hibernate(self) -> None:
        """Called before the agent hibernates (see ``hibernate_after``): release what a
        sleeper should not hold, such as connections. A message that arrives meanwhile keeps
        it awake (then :meth:`on_wake` follows). Raising here crashes the agent."""

    async def on_wake(self) -> None:
        """Called when a message (or a timer) wakes the hibernated agent, before that message
        is handled: the same instance goes on, with its state (no second ``on_start``).
        Raising here crashes the agent; the messages waiting go to its next instance."""


class DeferredReply:
    """The promise to answer a call later, made by ``ctx.defer()``.

    Answer it from any later message or from a background task of the agent. If the agent
    stops first, the caller gets ``AgentStopped``; if the caller gave up, the answer is dropped,
    except that resends of an exactly-once call (same message id) get it all the same.
    """

    __slots__ = ("_cell", "_envelope", "_handle", "_server", "_used")

    def __init__(
        self, cell: AgentCell, server: GenServer, envelope: Envelope, handle: ReplyHandle
    ) -> None:
        self._cell = cell
        self._server = server
        self._envelope = envelope
        self._handle = handle
        self._used = False

    @property
    def pending(self) -> bool:
        """True while the caller waits and nobody has answered."""
        return self._handle.pending

    async def reply(self, value: Any) -> bool:
        """Send ``value`` as the reply.

        Returns False if it reached nobody: the caller had given up, or was already told that
        the agent stopped. (Under exactly-once, resends of the call get it all the same.)

        Raises:
            ReplyAlreadySent: this promise was kept already.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self._cell.system.thread_id, "deferred.reply")
        await trio.lowlevel.checkpoint()
        handle = self._keep()
        if handle.pending:
            self._cell.system.delivery.record_success(self._cell.endpoint)
        elif not handle.abandoned:
            return False  # answered already: through ``ctx.caller``, or at the agent's stop
        return handle.reply(value)  # to a caller that gave up: only its resends may get it

    async def fail(self, error: BaseException) -> bool:
        """Make the caller's call raise ``CallFailed`` with ``error`` as its ``__cause__``
        (``error`` itself if it is a ``CallFailed``), counted as a failure by the books and
        the circuit breaker; returns and raises as :meth:`reply`."""
        check_thread(self._cell.system.thread_id, "deferred.fail")
        await trio.lowlevel.checkpoint()
        handle = self._keep()
        if not (handle.pending or handle.abandoned):
            return False
        if handle.pending:
            self._cell.system.delivery.deferred_call_failed(self._cell.endpoint)
        return handle.fail(failed_call(self._cell.id, error))

    def _keep(self) -> ReplyHandle:
        if self._used:
            raise ReplyAlreadySent("this deferred reply was already given")
        self._used = True
        self._server.forget_deferred(self._handle)
        return self._handle


class Caller:
    """The reply slot of the call in hand, as a handler sees it through ``ctx.caller``.

    Answering it inside the handler replaces the handler's return value as the reply; a
    failure reaches the caller as ``CallFailed``, as a handler's raise would, and counts as a
    failed call, without a crash.
    """

    __slots__ = ("_cell", "_envelope", "_handle")

    def __init__(self, cell: AgentCell, envelope: Envelope, handle: ReplyHandle) -> None:
        self._cell = cell
        self._envelope = envelope
        self._handle = handle

    def __repr__(self) -> str:
        return f"<Caller {self._handle!r}>"

    @property
    def pending(self) -> bool:
        """True while the caller still waits and nobody has answered."""
        return self._handle.pending

    @property
    def replied(self) -> bool:
        """True once answered with a value (not an error)."""
        return self._handle.replied

    @property
    def abandoned(self) -> bool:
        """True once the caller gave up: an answer now would be dropped."""
        return self._handle.abandoned

    @property
    def deadline(self) -> float:
        """Trio time after which the caller no longer waits."""
        return self._handle.deadline

    def reply(self, value: Any) -> bool:
        """Answer the call with ``value``; returns False if its caller had given up.

        Raises:
            ReplyAlreadySent: the call was answered before.
            WrongThread: called from a thread other than the system's (nothing is answered).
        """
        check_thread(self._cell.system.thread_id, "ctx.caller.reply", sync=True)
        return self._handle.reply(value)

    def fail(self, error: BaseException) -> bool:
        """Make the call raise ``CallFailed`` with ``error`` as its ``__cause__`` (``error``
        itself if it is a ``CallFailed``); returns and raises as :meth:`reply`."""
        check_thread(self._cell.system.thread_id, "ctx.caller.fail", sync=True)
        handle = self._handle
        if handle.pending and self._cell._in_hand is not self._envelope:
            # Answered after its handler returned (deferred): not counted yet as failed.
            self._cell.system.delivery.deferred_call_failed(self._cell.endpoint)
        return handle.fail(failed_call(self._cell.id, error))


class Context:
    """What a handler knows about the message in hand and can ask of the system.

    One context serves all the messages of an agent instance: keep what you need from it
    (``ctx.defer()`` handles, refs), not the context itself. Its methods that change state
    raise ``WrongThread`` from a thread other than the system's (a handler's worker thread
    uses ``trio.from_thread.run_sync``), and ``AgentStopped`` once its instance has ended
    (``SystemClosed`` once the system has); its properties can be read from any.
    """

    __slots__ = (
        "_cell",
        "_deferred",
        "_envelope",
        "_instance",
        "_retry_after",
        "_server",
        "_system",
    )

    def __init__(self, cell: AgentCell, system: SystemApi) -> None:
        self._cell = cell
        self._system = system
        #: The number of the instance it serves (the cell's count of instances).
        self._instance = cell.instances
        #: The instance being served, once started (it keeps the calls deferred).
        self._server: GenServer | None = None
        self._envelope: Envelope | None = None
        self._deferred = False
        #: Seconds after which the message in hand is to be delivered again (``retry_after``).
        self._retry_after: float | None = None

    @property
    def envelope(self) -> Envelope:
        """The envelope of the message being handled."""
        if self._envelope is None:
            raise RuntimeError("no message is being handled")
        return self._envelope

    @property
    def message_id(self) -> MessageId:
        """The id of the message being handled."""
        return self.envelope.id

    @property
    def sender_id(self) -> AgentId | None:
        """The id of the agent that sent the message, if an agent did."""
        return self.envelope.sender

    @property
    def sender(self) -> AgentRef | None:
        """A ref to the sending agent, or ``None`` if no running agent sent it."""
        sender = self.envelope.sender
        return None if sender is None else self._system.whereis(sender)

    @property
    def caller(self) -> Caller | None:
        """The reply slot of the call being handled (``None`` for casts and infos).

        Answering it inside the handler replaces the handler's return value as the reply; to
        answer after the handler has returned, use :meth:`defer`.
        """
        envelope = self.envelope
        handle = envelope.reply
        return None if handle is None else Caller(self._cell, envelope, handle)

    @property
    def self(self) -> AgentRef:
        """This agent's own ref."""
        ref: AgentRef = self._cell.ref
        return ref

    @property
    def system(self) -> SystemApi:
        """The message system this agent runs in."""
        return self._system

    @property
    def deadline(self) -> float:
        """Trio time by which the caller of the call in hand wants its reply (inf if none)."""
        return self.envelope.deadline

    def defer(self) -> DeferredReply:
        """Answer the call in hand later; the agent serves other messages meanwhile.

        Raises:
            TypeError: the message in hand is not a call.
            WrongThread: called from a thread other than the system's.
        """
        self._check_thread("ctx.defer")
        handle = self.envelope.reply
        if handle is None:
            raise TypeError("only a call can be deferred")
        server = self._server
        assert server is not None  # a message is in hand: the instance is served
        self._deferred = True
        server.remember_deferred(handle)
        if self.envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE:
            handle.keep_answer()  # for resends of the call, even once this caller gave up
        return DeferredReply(self._cell, server, self.envelope, handle)

    def charge(self, *, tokens: int) -> None:
        """Report what the message in hand cost: ``tokens`` are charged to every
        ``TokenBudget`` of this agent (of its pool, for a member), now. Harmless without one.

        Raises:
            InvalidConfig: ``tokens`` is not an int from 0 up, or no message is in hand (in
                ``on_start``, or a background task between messages).
            WrongThread: called from a thread other than the system's.
        """
        self._check_thread("ctx.charge")
        check_count("tokens", tokens)
        self._check_in_hand("ctx.charge")
        self._cell.system.delivery.charge(self._cell.endpoint, tokens)

    def retry_after(self, seconds: float) -> None:
        """Have the message in hand delivered again ``seconds`` from when the handler
        returns, as a provider's "429, Retry-After" asks: not a failure, and none of its
        retries spent, whatever its guarantee (an at-most-once message too: its handler did
        not do its work, and asks for another run). Until then this agent (its pool, for a
        member) admits nothing: the messages sent meanwhile wait for admission too, behind
        this one. A call's caller keeps waiting for the later attempt's answer (the value the
        handler returns now is dropped), or gets ``CallTimeout`` at once if that attempt could
        not end before its deadline; a cast that could not is an ``EXPIRED`` dead letter. A
        handler that raises after asking crashes as any.

        Raises:
            InvalidConfig: ``seconds`` is not a number of seconds from 0 up, or no message is
                in hand.
            WrongThread: called from a thread other than the system's.
        """
        self._check_thread("ctx.retry_after")
        check_seconds("seconds", seconds, allow_zero=True)
        self._check_in_hand("ctx.retry_after")
        cell = self._cell
        cell.system.delivery.gate(cell.endpoint)  # the loop then settles it the slow way
        self._retry_after = float(seconds)
        self._deferred = True  # a call's handler's return value is no reply

    def _check_in_hand(self, operation: str) -> None:
        envelope = self._envelope
        if envelope is None or self._cell._in_hand is not envelope:
            raise InvalidConfig(f"{operation} is for a handler, with a message in hand")

    def monitor(self, ref: AgentRef) -> MonitorRef:
        """Get a ``Down`` info when the agent behind ``ref`` stops for good.

        If it has stopped already, the ``Down`` (reason ``NOPROC``) comes at once.
        """
        self._check_thread("ctx.monitor")
        check_instance("monitor", ref, AgentRef)
        return self._cell.monitor(ref._agent(), ref)

    def demonitor(self, monitor: MonitorRef) -> bool:
        """Remove a monitor. Returns False if it had fired or was removed already."""
        self._check_thread("ctx.demonitor")
        return self._cell.demonitor(monitor)

    def send_after(self, delay: float, payload: Any, *, to: AgentRef | None = None) -> Timer:
        """Deliver ``payload`` as an info to this agent (or to ``to``) in ``delay`` seconds.

        The timer is cancelled if this agent's instance stops first; ``timer.cancel()`` also.
        """
        self._check_thread("ctx.send_after")
        if to is None:
            return self._cell.send_after(delay, payload, self._cell)
        check_instance("to", to, AgentRef)
        return self._cell.send_after(delay, payload, to._local_agent("ctx.send_after"))

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a background task linked to this agent instance.

        It is cancelled when the instance stops; if it raises, the agent crashes with its
        error, as a linked process would in Erlang.

        Raises:
            SystemClosed: the message system has shut down.
        """
        self._check_thread("ctx.start_soon")
        self._cell.start_background(async_fn, args)

    def stop(self) -> None:
        """End this instance normally once the current handler returns.

        As in OTP, a normal exit is final for a transient or temporary agent, and a permanent
        agent is started again; ``system.stop(ref)`` stops any agent for good.
        """
        self._check_thread("ctx.stop")
        cell = self._cell
        cell.request_stop(StopReason.NORMAL, final=cell.restart is not RestartType.PERMANENT)

    def _check_thread(self, operation: str) -> None:
        """Refuse ``operation`` from another thread, and through a context whose instance has
        ended (kept past a restart or a stop): as a dead process in Erlang, it can do nothing
        more, and must not act on the agent's next instance."""
        cell = self._cell
        check_thread(cell.system.thread_id, operation, sync=True)
        if self._instance != cell.instances or cell.state in _ENDED:
            if cell.system.closing and cell.state is CellState.STOPPED:
                raise SystemClosed(f"{operation}: the message system has shut down")
            raise AgentStopped(f"{operation}: the instance of {cell.id!r} it served has ended")


#: A cell's states once the instance that a context served has ended, and no other began.
_ENDED = frozenset({CellState.RESTARTING, CellState.STOPPED})

_on_start_takes_context: weakref.WeakKeyDictionary[type[Agent], bool] = weakref.WeakKeyDictionary()


def on_start_takes_context(agent_class: type[Agent]) -> bool:
    """Whether ``agent_class.on_start`` takes the context; decided once per class."""
    takes = _on_start_takes_context.get(agent_class)
    if takes is None:
        try:
            parameters = list(inspect.signature(agent_class.on_start).parameters.values())
        except (TypeError, ValueError):
            parameters = []
        positional = (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        )
        takes = any(parameter.kind in positional for parameter in parameters[1:])
        _on_start_takes_context[agent_class] = takes
    return takes


def failed_call(agent: AgentId, error: BaseException) -> CallFailed:
    """What the caller of a call its callee failed (``ctx.caller.fail``, a deferred reply's
    ``fail``) sees: ``error`` as ``CallFailed``."""
    if isinstance(error, CallFailed):
        return error
    failure = CallFailed(f"{agent!r} failed the call: {bounded_repr(error)}")
    failure.__cause__ = error
    return failure


def format_payload(instance: Agent | None, payload: Any) -> str:
    """``payload`` as ``instance.format_message`` gives it (the bounded repr if there is no
    instance, or its ``format_message`` raises or returns a non-``str``), cut to the bounded
    length. Only for what is logged or quoted: never on the path of a message."""
    if instance is not None and type(instance).format_message is not Agent.format_message:
        try:
            text = instance.format_message(payload)
        except Exception:
            return bounded_repr(payload)
        if isinstance(text, str):
            return shorten(text, REPR_LIMIT)
    return bounded_repr(payload)
