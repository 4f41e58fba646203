"""The runtime of one agent: its loop over the mailbox, and how each of its instances ends.

A cell is the part of an agent that outlives any one instance of the user's class: the id, the
mailbox, the ref handed out to others, the monitors set on it. Its supervisor runs
:meth:`AgentCell.run` once per instance; between a crash and the restart the mailbox stays open,
so messages wait for the new instance. The cell stays until the agent stops for good.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from supervisor import CurrentChild, EscalatedFailure, FinalExit, RestartType, current_child

from .._behaviour.agent import (
    Agent,
    Context,
    Directive,
    NotHandled,
    format_payload,
    on_start_takes_context,
    stopped_error,
)
from .._behaviour.agent_checks import warn_cast_returned
from .._behaviour.refs import AgentRef
from .._core.bounded_repr import LazyText, bounded_repr
from .._core.checks import check_instance
from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope, MessageKind, info
from .._core.notifications import (
    AgentExited,
    AgentStarted,
    Down,
    ExitReason,
    MonitorRef,
    StopReason,
)
from .._delivery.dead_letters import DeadLetterReason
from .._primitives.circuit import CircuitBreaker
from .._primitives.dedup import NO_REPLY, HandledMessages
from .._primitives.mailbox import Mailbox, MailboxConfig
from .._primitives.reply import ReplyHandle
from .._primitives.timers import Timer
from ..errors import (
    AgentStartFailed,
    AgentStopped,
    CallFailed,
    DeliveryFailed,
    HandlerTimeout,
    MailboxClosed,
    NonRetryable,
    SystemClosed,
    UnhandledMessage,
)
from .context_vars import current_cell, inherited_deadline

if TYPE_CHECKING:
    from .._routing.groups import Pool
    from .._system.system import MessageSystem

__all__ = ["AgentCell", "CellState"]

logger = logging.getLogger("terraphim_actors")

EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE

#: Messages served back to back before the loop yields to other tasks, so that a busy agent
#: pays for one scheduler round per batch rather than one per message.
_BATCH = 128


class CellState(enum.Enum):
    """Where an agent is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    #: Between instances: its supervisor will start it again (or retire it); messages wait.
    RESTARTING = "restarting"
    #: Stopped for good: the mailbox is closed and the name is free.
    STOPPED = "stopped"


#: The states in which an instance of the agent runs.
_LIVE = frozenset({CellState.STARTING, CellState.RUNNING, CellState.STOPPING})


class AgentCell:
    """One agent's identity, mailbox and task; see the module docstring."""

    __slots__ = (
        "_args",
        "_background",
        "_cleanup_scope",
        "_deferred",
        "_draining",
        "_exit_as",
        "_final",
        "_finishes_abandoned",
        "_handler_scope",
        "_in_hand",
        "_instance_over",
        "_instance_scope",
        "_last_reason",
        "_linked_failure",
        "_stop_deadline",
        "_stop_requested",
        "_task",
        "_timers",
        "_watchers",
        "_watching",
        "agent_class",
        "breaker",
        "exit_reason",
        "handled",
        "handler_timeout",
        "id",
        "instances",
        "latest",
        "mailbox",
        "placement",
        "pool",
        "ref",
        "restart",
        "retiring",
        "shutdown",
        "state",
        "stop_requested_at",
        "stopped",
        "stops_pending",
        "system",
    )

    def __init__(
        self,
        system: MessageSystem,
        agent_class: type[Agent],
        args: tuple[Any, ...],
        agent_id: AgentId,
        mailbox: MailboxConfig,
        shutdown: float,
        restart: RestartType,
        handler_timeout: float | None = None,
    ) -> None:
        self.system = system
        self.id = agent_id
        self.agent_class = agent_class
        self.mailbox = Mailbox(agent_id, mailbox)
        self.ref = AgentRef(self)
        #: Seconds a stopping agent gets to finish its handler (and ``on_stop``).
        self.shutdown = shutdown
        #: Whether its supervisor restarts it, which decides when an exit is for good.
        self.restart = restart
        #: Seconds a handler may run before it fails with ``HandlerTimeout`` (None: no limit).
        self.handler_timeout = handler_timeout
        self.state = CellState.STARTING
        #: Instances started so far (the first start, then one per restart).
        self.instances = 0
        #: The latest instance (kept after it ends): whose ``format_message`` formats messages.
        self.latest: Agent | None = None
        #: The supervisor running the agent, and the id it knows it by.
        self.placement: CurrentChild | None = None
        #: ``system.stop`` asked for it to go for good: the next stop is final.
        self.retiring = False
        #: ``system.stop`` calls of it under way (a cancelled one keeps ``retiring`` if any is).
        self.stops_pending = 0
        self._last_reason: ExitReason = StopReason.NORMAL
        #: Set once the agent has stopped for good.
        self.stopped = trio.Event()
        self.exit_reason: ExitReason | None = None
        self._args = args
        self._task: trio.lowlevel.Task | None = None
        self._instance_scope: trio.CancelScope | None = None
        self._stop_requested: StopReason | None = None
        #: When a requested stop's shutdown time is up: it covers the handler in hand and
        #: ``on_stop`` together.
        self._stop_deadline = math.inf
        #: When the running instance was asked to stop (None until it is).
        self.stop_requested_at: float | None = None
        #: The scope ``on_stop`` runs in, while it runs (the shutdown deadline can shorten it).
        self._cleanup_scope: trio.CancelScope | None = None
        #: Set when the running instance ends, made only when someone waits for that.
        self._instance_over: trio.Event | None = None
        #: The stop asked for is for good: the mailbox is closed, no instance will follow.
        self._final = False
        #: How the instance's crash reaches its supervisor, if not as itself (a directive).
        self._exit_as: type[EscalatedFailure | FinalExit] | None = None
        #: Handle what is already in the mailbox before stopping (subscribers at shutdown).
        self._draining = False
        self._linked_failure: BaseException | None = None
        self._in_hand: Envelope | None = None
        #: Cancelled to cut short the handler of a call whose caller gave up (while serving).
        self._handler_scope: trio.CancelScope | None = None
        #: The running instance's ``finish_abandoned_calls``.
        self._finishes_abandoned = False
        # What the instance left running, to settle when it ends. Dicts used as ordered sets:
        # an empty dict takes a third of an empty set's memory, and there is one per agent.
        self._deferred: dict[ReplyHandle, None] = {}
        self._timers: dict[Timer, None] = {}
        self._background: dict[trio.CancelScope, None] = {}
        self._watchers: dict[MonitorRef, AgentCell] = {}
        self._watching: dict[MonitorRef, AgentCell] = {}
        #: Its circuit breaker, made on its first failure (kept across restarts).
        self.breaker: CircuitBreaker | None = None
        #: What it handled lately under exactly-once, made on the first such message.
        self.handled: HandledMessages | None = None
        #: The pool it is a member of, whose window dedups what comes through the pool.
        self.pool: Pool | None = None

    def __repr__(self) -> str:
        return f"<AgentCell {self.id!r} {self.state.value}>"

    @property
    def in_own_task(self) -> bool:
        """True when the caller is this agent's main task (so it cannot wait on itself)."""
        return self._task is not None and trio.lowlevel.current_task() is self._task

    # -- delivery --------------------------------------------------------------------------

    @property
    def load(self) -> int:
        """Messages waiting, plus one while a handler runs: what least-loaded balancing uses."""
        return len(self.mailbox) + (self._in_hand is not None)

    def notify(self, payload: Any) -> None:
        """Send this agent a notification from the system (at most once, never raises)."""
        delivery = self.system.delivery
        envelope = info(payload, recipient=self.id, options=delivery.notice_options())
        delivery.post(self, envelope)

    def refusal(self) -> AgentStopped:
        """The error a call to this agent gets once it has stopped for good."""
        return stopped_error(self.id, self.exit_reason or self._stop_requested or StopReason.NORMAL)

    def _undelivered_reason(self) -> DeadLetterReason:
        if self.system.closing:
            return DeadLetterReason.SYSTEM_STOPPED
        return DeadLetterReason.AGENT_STOPPED

    # -- life ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[AgentRef] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run one instance of the agent; its supervisor calls this again for each restart.

        Reports the ref once ``on_start`` is done. Returns when the instance stops normally
        and raises what it crashed with, so that the supervisor can tell the two apart.

        Raises:
            AgentStartFailed: building the instance or ``on_start`` raised.
            Exception: the instance crashed with it.
        """
        self._begin_instance()
        reason: ExitReason = StopReason.KILLED
        try:
            reason = await self._run_instance(task_status)
        except AgentStartFailed as failure:
            reason = failure.__cause__ or failure
            raise
        finally:
            self._after_instance(reason)
        if isinstance(reason, Exception):
            if self._exit_as is not None:
                raise self._exit_as(f"{self.id!r} failed with {bounded_repr(reason)}") from reason
            raise reason

    def _begin_instance(self) -> None:
        if self.system.closing:
            raise SystemClosed(f"{self.id!r} not started: the system is shutting down")
        self.placement = current_child()
        self.state = CellState.STARTING
        self.instances += 1
        if self.instances > 1:
            self.system.count_restart()
        self._stop_requested = None
        self._stop_deadline = math.inf
        self.stop_requested_at = None
        self._draining = False
        self._exit_as = None
        self._linked_failure = None

    def _after_instance(self, reason: ExitReason) -> None:
        """Settle the agent after an instance: for good if that stop was final, otherwise
        parked, mailbox open, until its supervisor starts it again or retires it."""
        if isinstance(reason, Exception):
            self.system.count_crash()
        self._last_reason = reason
        if self._final or self.system.closing:
            self.finish(reason)
        else:
            self.state = CellState.RESTARTING
        over, self._instance_over = self._instance_over, None
        if over is not None:
            over.set()

    @property
    def has_instance(self) -> bool:
        """Whether an instance of the agent runs (starting, running or stopping)."""
        return self.state in _LIVE

    async def wait_instance_over(self) -> None:
        """Wait until no instance of the agent runs (at once if none does)."""
        if not self.has_instance:
            await trio.lowlevel.checkpoint()
            return
        if self._instance_over is None:
            self._instance_over = trio.Event()
        await self._instance_over.wait()

    def format_message(self, payload: Any) -> str:
        """``payload`` as the agent's ``format_message`` gives it (its latest instance's; the
        bounded repr before the first), for logs and error messages."""
        return format_payload(self.latest, payload)

    def describe(self, envelope: Envelope) -> str:
        """``envelope`` for a log or an error message, its payload through ``format_message``."""
        return envelope.describe(self.format_message(envelope.payload))

    def retire(self) -> None:
        """Its supervisor will not start it again: stop it for good.

        An instance still running has a supervisor that does run it (one that refused a spec
        shared with it retires nothing), and that supervisor settles it when it ends.
        """
        if self.has_instance:
            return
        self.finish(StopReason.NORMAL if self.retiring else self._last_reason)

    async def _run_instance(self, task_status: trio.TaskStatus[AgentRef]) -> ExitReason:
        self._task = self.mailbox.owner = trio.lowlevel.current_task()
        current_cell.set(self)
        inherited_deadline.set(math.inf)
        instance: Agent | None = None
        reason: ExitReason = StopReason.KILLED
        context = Context(self)
        try:
            # One scope for the instance's whole life, ``on_start`` included: kill() cancels it.
            with trio.CancelScope() as scope:
                self._instance_scope = scope
                instance = self.latest = await self._start_instance(context)
                self.state = CellState.RUNNING
                task_status.started(self.ref)
                self.system.publish(AgentStarted(self.id))
                reason = await self._serve(instance, context)
            if instance is None:
                raise AgentStartFailed(f"{self.id!r} was stopped before on_start finished")
            if scope.cancelled_caught and self._linked_failure is not None:
                reason = self._linked_failure
        except BaseException as error:
            if instance is not None and not isinstance(error, trio.Cancelled):
                reason = error  # SystemExit, KeyboardInterrupt: on their way out of Trio
            raise
        finally:
            self._instance_scope = None
            if instance is not None:
                await self._end_instance(instance, reason)
            else:
                self._settle_links()  # what a failed or cancelled ``on_start`` set up
        return reason

    async def _start_instance(self, context: Context) -> Agent:
        """Build a fresh instance and run its ``on_start`` (given ``context`` if it takes it).

        Raises:
            AgentStartFailed: the constructor or ``on_start`` raised.
        """
        try:
            instance = self.agent_class(*self._args)
            if on_start_takes_context(self.agent_class):
                await instance.on_start(context)
            else:
                await instance.on_start()
        except Exception as error:
            raise AgentStartFailed(f"{self.id!r} failed to start: {bounded_repr(error)}") from error
        return instance

    async def _serve(self, instance: Agent, context: Context) -> ExitReason:
        """The gen_server loop: one message at a time until asked to stop or crashed.

        Messages are served in batches: the loop takes what is waiting without a checkpoint and
        yields once per batch (or when a handler awaits); the clock is read at the start and the
        end of a batch, not per message. The handlers are looked up once: wrapped in a time
        limit if the agent has one, as they are otherwise.
        """
        limit = self.handler_timeout
        handlers: _Handlers = (instance.handle_cast, instance.handle_call, instance.handle_info)
        if limit is not None:
            handlers = (
                _limited(handlers[0], limit, self.id),
                _limited(handlers[1], limit, self.id),
                _limited(handlers[2], limit, self.id),
            )
        self._finishes_abandoned = instance.finish_abandoned_calls
        try:
            while True:
                # ``call_abandoned`` cancels this scope to cut short a call nobody waits for. A
                # cancelled scope stays cancelled: one per such call, not one per message.
                with trio.CancelScope() as abandoning:
                    self._handler_scope = abandoning
                    reason = await self._serve_messages(instance, context, handlers)
                    if reason is not None:
                        return reason
                self._handler_scope = None
                if abandoning.cancelled_caught:
                    self._settle_abandoned()
        finally:
            self._handler_scope = None

    async def _serve_messages(
        self,
        instance: Agent,
        context: Context,
        handlers: _Handlers,
    ) -> ExitReason | None:
        """Serve messages until the instance is to stop (returns why) or ``call_abandoned``
        has cancelled the handler scope (returns None)."""
        handle_cast, handle_call, handle_info = handlers
        mailbox = self.mailbox
        delivery = self.system.delivery
        clock = self.system.clock.current_time
        served = 0
        batch_started = clock()
        try:
            while self._stop_requested is None or (self._draining and len(mailbox)):
                if self._handler_scope is None:  # not ``cancel_called``: it reads the clock
                    return None
                if served >= _BATCH:
                    served = 0
                    await trio.lowlevel.checkpoint()
                envelope = mailbox.try_receive()
                if envelope is None:
                    idle_from = clock()
                    mailbox.record_processing_time(idle_from - batch_started, idle_from)
                    try:
                        await mailbox.wait_for_arrival()  # request_stop interrupts it
                    except MailboxClosed:
                        break
                    batch_started = clock()
                    served = 0
                    continue
                served += 1
                # Expired: a call once its caller gave up, anything else past its timeout.
                handle = envelope.reply
                if (
                    handle.abandoned
                    if handle is not None
                    else envelope.created_at + envelope.options.timeout < clock()
                ):
                    delivery.undelivered(envelope, DeadLetterReason.EXPIRED, _expiry(envelope))
                    continue
                if envelope.options.guarantee is EXACTLY_ONCE and delivery.suppress_duplicate(
                    self, envelope
                ):
                    continue
                self._in_hand = envelope
                context._envelope = envelope
                reply = NO_REPLY
                try:
                    kind = envelope.kind
                    if kind is MessageKind.CAST:
                        # A value returned from a cast reaches nobody: say so, once per class.
                        returned = await handle_cast(envelope.payload, context)
                        if returned is not None:
                            warn_cast_returned(type(instance), returned)
                    elif kind is MessageKind.CALL:
                        reply = await self._serve_call(handle_call, context, envelope)
                    else:
                        await handle_info(envelope.payload, context)
                except _FailedThroughCaller:
                    delivery.failed += 1
                    delivery.record_failure(self)
                    if envelope.options.guarantee is EXACTLY_ONCE:
                        assert handle is not None
                        delivery.remember(self, envelope, handle.keep_answer())
                except NotHandled:
                    unhandled = UnhandledMessage(f"{type(instance).__name__} does not handle it")
                    delivery.undelivered(envelope, DeadLetterReason.UNHANDLED, unhandled)
                except Exception as crash:
                    delivery.record_failure(self)
                    directive = self._decide(instance, crash, envelope, context)
                    if _not_retryable(crash, instance.no_retry_on):
                        why = DeadLetterReason.REJECTED
                    elif directive is Directive.RESUME:
                        why = DeadLetterReason.HANDLER_CRASHED
                    else:
                        return crash  # settled as the instance ends
                    self._in_hand = None
                    delivery.undelivered(envelope, why, _failure(self.id, crash))
                    if directive is not Directive.RESUME:
                        return crash
                else:
                    if self.breaker is None and envelope.options.guarantee is not EXACTLY_ONCE:
                        delivery.acknowledged += 1  # all that acknowledging takes, mostly
                    else:
                        delivery.acknowledge(self, envelope, reply)
                self._in_hand = None
        finally:
            stopped_at = clock()
            mailbox.record_processing_time(stopped_at - batch_started, stopped_at)
        return self._stop_requested or StopReason.NORMAL

    def _decide(
        self, instance: Agent, crash: Exception, envelope: Envelope, context: Context
    ) -> Directive:
        """Ask the instance's ``on_error`` what its crash means (RESTART if that raises), and
        prepare the instance's end for a STOP or an ESCALATE."""
        try:
            directive = instance.on_error(crash, envelope.payload, context)
            if not isinstance(directive, Directive):
                raise TypeError(f"on_error returned {bounded_repr(directive)}, not a Directive")
        except Exception as error:
            logger.error("on_error of %r raised; restarting it", self.id, exc_info=error)
            directive = Directive.RESTART
        logger.error(
            "agent %r crashed handling %s (%s)",
            self.id,
            LazyText(self.describe, envelope),
            directive.value,
            exc_info=crash,
        )
        if directive is Directive.STOP:
            self._final = True
            self._exit_as = FinalExit
            self.mailbox.close()
        elif directive is Directive.ESCALATE:
            self._exit_as = EscalatedFailure
        return directive

    async def _serve_call(self, handle_call: _Handler, context: Context, envelope: Envelope) -> Any:
        """Run ``handle_call`` (as ``_serve`` looked it up) and answer the caller; returns the
        reply it gave (``NO_REPLY`` if it deferred, answered through ``ctx.caller``, or nobody
        waited)."""
        handle = envelope.reply
        assert handle is not None
        context._deferred = False
        handle.serving = self
        token = inherited_deadline.set(envelope.deadline)
        try:
            result = await handle_call(envelope.payload, context)
        except Exception as error:
            # A handler may have answered (or deferred and answered) before it raised.
            if handle.pending:
                wrapper = UnhandledMessage if isinstance(error, NotHandled) else CallFailed
                handle.fail(_wrap(wrapper, self.id, error, self.format_message(envelope.payload)))
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

    def call_abandoned(self, handle: ReplyHandle) -> None:
        """The caller of a call this agent took in gave up: if its handler is still running,
        cancel it (nobody waits for its answer), unless the agent finishes abandoned calls.

        An exactly-once call runs to its end: its answer is kept for a resend of it, which is
        what a caller that gave up is expected to send, and a resend must not run it again.
        """
        in_hand = self._in_hand
        scope = self._handler_scope
        if (
            in_hand is not None
            and in_hand.reply is handle
            and scope is not None
            and not self._finishes_abandoned
            and in_hand.options.guarantee is not EXACTLY_ONCE
        ):
            scope.cancel()
            self._handler_scope = None

    def _settle_abandoned(self) -> None:
        """Settle the call whose handler ``call_abandoned`` cut short: failed, and counted
        against the circuit breaker once (the caller's ``CallTimeout`` already counts)."""
        envelope, self._in_hand = self._in_hand, None
        assert envelope is not None
        assert envelope.reply is not None
        delivery = self.system.delivery
        delivery.failed += 1
        if not envelope.reply.expired:  # given up through the caller's own cancel scope
            delivery.record_failure(self)
        logger.info(
            "cancelled %r's handler of %s: its caller gave up",
            self.id,
            LazyText(self.describe, envelope),
        )

    async def _end_instance(self, instance: Agent, reason: ExitReason) -> None:
        """Settle everything the instance had in hand, then let it clean up."""
        self.state = CellState.STOPPING
        in_hand, self._in_hand = self._in_hand, None
        if in_hand is not None:
            crashed = isinstance(reason, BaseException)
            why = DeadLetterReason.HANDLER_CRASHED if crashed else self._undelivered_reason()
            # A handler cut short by a restart (not a stop for good) gets another try.
            runs_again = not (crashed or self._final or self.retiring or self.system.closing)
            self.system.delivery.undelivered(
                in_hand, why, stopped_error(self.id, reason), runs_again=runs_again
            )
        for handle in self._deferred:
            # Not if the handler answered it through ``ctx.caller``; but if its caller gave up,
            # so that resends of it (exactly-once) hear of the stop too.
            if handle.pending or handle.abandoned:
                handle.fail(stopped_error(self.id, reason))
        self._deferred.clear()
        self._settle_links()
        if type(instance).on_stop is not Agent.on_stop:  # a scope costs; the default is a no-op
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = min(self._stop_deadline, trio.current_time() + self.shutdown)
                self._cleanup_scope = cleanup
                try:
                    await instance.on_stop(reason)
                except Exception as error:
                    logger.error("agent %r raised in on_stop", self.id, exc_info=error)
                finally:
                    self._cleanup_scope = None
        self.system.publish(AgentExited(self.id, reason))

    def _settle_links(self) -> None:
        """Cancel the instance's timers and background tasks and remove its monitors."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for scope in self._background:
            scope.cancel()
        for monitor, target in self._watching.items():
            target._watchers.pop(monitor, None)
        self._watching.clear()

    def finish(self, reason: ExitReason) -> None:
        """The agent has stopped for good: settle the mailbox, tell the monitors, unregister.

        Only between instances (or after the last one); does nothing the second time.
        """
        if self.state is CellState.STOPPED:
            return
        self.state = CellState.STOPPED
        self.exit_reason = reason
        self.mailbox.close()
        for envelope in self.mailbox.drain():
            self._drop(envelope, self._undelivered_reason(), reason)
        self.system.retire(self)
        watchers, self._watchers = self._watchers, {}
        for monitor, watcher in watchers.items():
            watcher._watching.pop(monitor, None)
            watcher.notify(Down(self.ref, reason, monitor))
        self.stopped.set()

    def _drop(
        self, envelope: Envelope, why: DeadLetterReason, reason: ExitReason = StopReason.NORMAL
    ) -> None:
        """Settle a message this agent did not handle: a waiting caller gets ``AgentStopped``;
        a cast or info is retried or becomes a dead letter, by its guarantee."""
        self.system.delivery.undelivered(envelope, why, stopped_error(self.id, reason))

    # -- stopping --------------------------------------------------------------------------

    def request_stop(self, reason: StopReason, *, final: bool, drain: bool = False) -> None:
        """Ask the running instance to stop once its current handler returns.

        A ``final`` stop is for good: the mailbox closes at once, so later messages are refused
        (dead letters, or ``AgentStopped`` for calls) and those already waiting are settled when
        it stops. Otherwise the mailbox stays open for the next instance. With ``drain`` the
        instance first handles what is already in its mailbox.
        """
        if self.state is CellState.STOPPED:
            return
        if self._stop_requested is None:
            self._stop_requested = reason
            self.stop_requested_at = self.system.clock.current_time()
            self._stop_deadline = self.stop_requested_at + self.shutdown
            self._draining = drain
        if final:
            self._final = True
            self.mailbox.close()
        self.mailbox.interrupt_receivers()

    def kill(self) -> None:
        """Cancel the running instance now (its handler is interrupted)."""
        if self._instance_scope is not None:
            self._instance_scope.cancel()

    def cut_short(self, grace: float) -> None:
        """Cancel the running instance now and give its ``on_stop`` (running or to come) at
        most ``grace`` more seconds: the system's shutdown deadline has passed."""
        deadline = self.system.clock.current_time() + grace
        self._stop_deadline = min(self._stop_deadline, deadline)
        if self._cleanup_scope is not None:
            self._cleanup_scope.deadline = min(self._cleanup_scope.deadline, deadline)
        self.kill()

    @property
    def stop_deadline(self) -> float:
        """When the stop asked for is due to be over (``inf`` if none was asked)."""
        return self._stop_deadline

    @property
    def activity(self) -> str:
        """What the instance is busy with, as logs show it."""
        if self._cleanup_scope is not None:
            return "on_stop"
        if self.state is CellState.STARTING:
            return "on_start"
        if self._in_hand is not None:
            return self.describe(self._in_hand)
        return "nothing"

    # -- what handlers ask for through the context ----------------------------------------

    def remember_deferred(self, handle: ReplyHandle) -> None:
        self._deferred[handle] = None

    def forget_deferred(self, handle: ReplyHandle) -> None:
        self._deferred.pop(handle, None)

    def monitor(self, ref: AgentRef) -> MonitorRef:
        check_instance("monitor", ref, AgentRef)
        target = ref._agent()
        monitor = MonitorRef(target.id)
        if target.state is CellState.STOPPED:
            self.notify(Down(ref, StopReason.NOPROC, monitor))
        else:
            target._watchers[monitor] = self
            self._watching[monitor] = target
        return monitor

    def demonitor(self, monitor: MonitorRef) -> bool:
        target = self._watching.pop(monitor, None)
        if target is None:
            return False
        target._watchers.pop(monitor, None)
        return True

    def send_after(self, delay: float, payload: Any, to: AgentRef | None) -> Timer:
        if to is not None:
            check_instance("to", to, AgentRef)
        target = self if to is None else to._agent()

        def fire() -> None:
            self._timers.pop(timer, None)
            target.notify(payload)

        timer = self.system.timers.call_after(delay, fire)
        self._timers[timer] = None
        return timer

    def start_background(
        self, async_fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        # Shielded: it ends with its instance (which cancels it), not before, when the system
        # is cancelled from outside. Started once the instance is ending, it ends at once.
        scope = trio.CancelScope(shield=True)
        if self.state is not CellState.RUNNING and self.state is not CellState.STARTING:
            scope.cancel()
        self._background[scope] = None
        instance = self.instances

        async def linked() -> None:
            inherited_deadline.set(math.inf)
            with scope:
                try:
                    await async_fn(*args)
                except Exception as error:
                    logger.error("background task of %r failed", self.id, exc_info=error)
                    if instance == self.instances and self._linked_failure is None:
                        self._linked_failure = error
                        self.kill()  # only the instance it belongs to
            self._background.pop(scope, None)

        try:
            self.system.nursery.start_soon(linked)
        except RuntimeError:  # Trio's "Nursery is closed": the system's block has exited
            self._background.pop(scope, None)
            raise SystemClosed("the message system has shut down") from None


_Handler = Callable[[Any, Context], Awaitable[Any]]
#: ``handle_cast``, ``handle_call`` and ``handle_info``, as ``_serve`` calls them.
_Handlers = tuple[_Handler, _Handler, _Handler]


def _limited(handler: _Handler, limit: float, agent: AgentId) -> _Handler:
    """``handler`` cancelled once it has run ``limit`` seconds, failing with HandlerTimeout.

    Only an agent with a limit pays for the cancel scope: ``_serve`` wraps its handlers once per
    instance, and calls them directly otherwise.
    """
    name = getattr(handler, "__name__", "handler")

    async def limited(payload: Any, context: Context) -> Any:
        with trio.CancelScope(deadline=trio.current_time() + limit) as scope:
            return await handler(payload, context)
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
