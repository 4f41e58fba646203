"""The runtime of one agent (OTP's proc_lib): how each of its instances starts and ends.

A cell is the part of an agent that outlives any one instance of the user's class: the id, the
mailbox, the ref handed out to others, the monitors set on it. Its supervisor runs
:meth:`AgentCell.run` once per instance; between a crash and the restart the mailbox stays open,
so messages wait for the new instance. The cell stays until the agent stops for good.

What an instance does with its messages is its behaviour's business (``Behaviour`` in
``_core/protocols.py``; the Agent's is ``_behaviour/gen_server.py``): the cell knows no call or
cast. It moves through its lifecycle only as ``lifecycle.py``'s table allows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from supervisor import (
    CurrentChild,
    EscalatedFailure,
    FinalExit,
    Hibernate,
    RestartType,
    current_child,
)

from .._core.bounded_repr import bounded_repr
from .._core.ids import AgentId
from .._core.messages import Envelope, MessageKind
from .._core.notifications import (
    AgentExited,
    AgentStarted,
    Down,
    ExitReason,
    MonitorRef,
    StopReason,
)
from .._core.protocols import RUN_AGAIN
from .._delivery.dead_letters import DeadLetterReason
from .._primitives.mailbox import Mailbox, MailboxConfig
from .._primitives.timers import Timer
from .._routing.endpoint import Endpoint
from ..errors import AgentStartFailed, AgentStopped, SystemClosed
from .activation import ActivatingInbox
from .context_vars import current_cell, inherited_deadline
from .lifecycle import CellState, transition

if TYPE_CHECKING:
    from .._core.protocols import Behaviour, Instance
    from .host import AgentHost

__all__ = ["AgentCell", "CellState", "stopped_error"]

logger = logging.getLogger("terraphim_actors")


# Read once: on Python 3.11 an enum member read from its class goes through the enum's
# metaclass, several times dearer than a global; these are read at every start.
_STARTING = CellState.STARTING
_RUNNING = CellState.RUNNING
_HIBERNATED = CellState.HIBERNATED
_KILLED = StopReason.KILLED

#: The states in which an instance of the agent runs.
_LIVE = frozenset({CellState.STARTING, CellState.RUNNING, CellState.STOPPING})
#: The states in which it takes messages: running, or hibernated (a message wakes it).
_SERVING = frozenset({CellState.RUNNING, CellState.HIBERNATED})


class _NoneYet(dict[Any, Any]):
    """The empty dict that a cell's rarely used records start as, shared by every cell: it
    refuses an entry (each cell makes a dict of its own for its first)."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("the shared empty record takes no entry: make one of your own first")


_NONE_YET: dict[Any, Any] = _NoneYet()


class _Unscoped:
    """The instance's scope when its supervisor's serves: a ``with`` that does nothing.

    Its ``__enter__`` and ``__exit__`` are static, so that the frame waiting inside the ``with``
    keeps the one shared function rather than a method bound for it (as ``nullcontext``'s
    would be): 64 bytes of every idle agent."""

    __slots__ = ()

    @staticmethod
    def __enter__() -> None:
        return None

    @staticmethod
    def __exit__(*_: object) -> None:
        return None


_UNSCOPED = _Unscoped()


class _Stopping:
    """What a cell knows of its agent's stopping: asked for, under way, over.

    Made at the first of them (a stop asked for, a kill, a crash directive, a ``system.stop``,
    an instance's end), so that an agent never asked to stop keeps one empty slot for all of
    it: every slot of a cell is 8 bytes of each agent, asleep or awake. Whether a stop was
    asked for stays on the cell (``_stop_requested``), as each message reads it.
    """

    __slots__ = (
        "cleanup_scope",
        "deadline",
        "draining",
        "exit_as",
        "exit_reason",
        "final",
        "instance_over",
        "killed",
        "last_reason",
        "linked_failure",
        "requested_at",
        "retiring",
        "stops_pending",
    )

    def __init__(self) -> None:
        #: When the running instance was asked to stop (None until it is).
        self.requested_at: float | None = None
        #: When a requested stop's shutdown time is up: it covers the handler in hand and
        #: ``on_stop`` together.
        self.deadline = math.inf
        #: Handle what is already in the mailbox before stopping (subscribers at shutdown).
        self.draining = False
        #: How the instance's crash reaches its supervisor, if not as itself (a directive).
        self.exit_as: type[EscalatedFailure | FinalExit] | None = None
        #: What a background task of the instance failed with (it killed the instance).
        self.linked_failure: BaseException | None = None
        #: The instance's kill came from the cell (``kill``), not from outside.
        self.killed = False
        #: The scope ``on_stop`` runs in, while it runs (the shutdown deadline can shorten it).
        self.cleanup_scope: trio.CancelScope | None = None
        #: Set when the running instance ends, made only when someone waits for that.
        self.instance_over: trio.Event | None = None
        #: The stop asked for is for good: the mailbox is closed, no instance will follow.
        self.final = False
        #: ``system.stop`` asked for it to go for good: the next stop is final.
        self.retiring = False
        #: ``system.stop`` calls of it under way (a cancelled one keeps ``retiring`` if any is).
        self.stops_pending = 0
        #: How the latest instance ended: the agent's exit reason if it is retired now.
        self.last_reason: ExitReason = StopReason.NORMAL
        #: Why it stopped for good, once it has.
        self.exit_reason: ExitReason | None = None

    def for_next_instance(self) -> _Stopping | None:
        """This record for a new instance: what concerned the last one forgotten, None when
        nothing is left (the new instance then starts with no record, as the first did)."""
        if not (
            self.final or self.retiring or self.stops_pending or self.instance_over is not None
        ):
            return None
        self.requested_at = None
        self.deadline = math.inf
        self.draining = False
        self.exit_as = None
        self.linked_failure = None
        return self


class AgentCell(ActivatingInbox):
    """One agent's identity, mailbox and task; see the module docstring. While the agent
    sleeps, the cell is its endpoint's inbox (see ``activation.py``)."""

    __slots__ = (
        "_background",
        "_in_hand",
        "_instance_scope",
        "_stop_requested",
        "_stopping",
        "_task",
        "_timers",
        "_watchers",
        "_watching",
        "behaviour",
        "endpoint",
        "id",
        "instances",
        "latest",
        "mailbox",
        "placement",
        "ref",
        "state",
        "system",
    )

    def __init__(
        self,
        system: AgentHost,
        behaviour: Behaviour[AgentCell],
        agent_id: AgentId,
        mailbox: MailboxConfig,
        endpoint: Endpoint | None = None,
    ) -> None:
        self.system = system
        self.id = agent_id
        #: What each instance runs (the Agent's gen_server): the cell never serves a message.
        #: It also holds the agent's shutdown time and restart type, kept across restarts.
        self.behaviour = behaviour
        #: The mailbox its instances take messages from.
        self.mailbox = Mailbox(agent_id, mailbox)
        if endpoint is None:
            endpoint = Endpoint(agent_id, self.mailbox, self)
        else:  # a restart of its subtree made a new cell: same circuit, window and group
            endpoint.attach(self.mailbox, self)
        #: The destination it serves (owned by routing, kept by its starter across cells):
        #: delivery puts into the endpoint's inbox, which is this cell's mailbox (the cell
        #: itself while the agent sleeps, which wakes it).
        self.endpoint = endpoint
        #: The ref handed out to others, set by whoever made the cell (an ``AgentRef``): the
        #: cell only passes it on, in ``Down`` and to its supervisor.
        self.ref: Any = None
        #: Where it is in its lifecycle; changed only through ``lifecycle.transition``.
        self.state = _STARTING
        #: Instances started so far (the first start, then one per restart).
        self.instances = 0
        #: The latest instance (kept after it ends): whose ``format_message`` formats messages.
        self.latest: Instance | None = None
        #: The supervisor running the agent, and the id it knows it by.
        self.placement: CurrentChild | None = None
        self._task: trio.lowlevel.Task | None = None
        #: What kill() cancels while an instance runs: its supervisor's scope around the run,
        #: or the cell's own without a supervisor.
        self._instance_scope: trio.CancelScope | None = None
        #: Why the running instance was asked to stop (None until it is): read per message.
        self._stop_requested: StopReason | None = None
        #: The rest of what stopping needs, made when first needed (see ``_Stopping``).
        self._stopping: _Stopping | None = None
        #: The message its instance is handling (settled by the cell if the instance ends).
        self._in_hand: Envelope | None = None
        # What the instance left running, to settle when it ends. Dicts used as ordered sets,
        # each the shared empty one until its first entry: most agents never set a timer or a
        # monitor, and four empty dicts were a thirtieth of an idle agent.
        self._timers: dict[Timer, None] = _NONE_YET
        #: Its background tasks' scopes, each with the event set as the task ends (made only
        #: when the instance's end waits for it).
        self._background: dict[trio.CancelScope, trio.Event | None] = _NONE_YET
        self._watchers: dict[MonitorRef, AgentCell] = _NONE_YET
        self._watching: dict[MonitorRef, AgentCell] = _NONE_YET

    def _stopping_record(self) -> _Stopping:
        """The cell's ``_Stopping``, made now if this is the first time it is needed."""
        stopping = self._stopping
        if stopping is None:
            stopping = self._stopping = _Stopping()
        return stopping

    @property
    def shutdown(self) -> float:
        """Seconds a stopping agent gets to finish its handler (and ``on_stop``)."""
        return self.behaviour.shutdown

    @property
    def restart(self) -> RestartType:
        """Whether its supervisor restarts it, which decides when an exit is for good."""
        return self.behaviour.restart

    @property
    def retiring(self) -> bool:
        """``system.stop`` asked for it to go for good: the next stop is final."""
        stopping = self._stopping
        return stopping is not None and stopping.retiring

    @retiring.setter
    def retiring(self, value: bool) -> None:
        if value or self._stopping is not None:
            self._stopping_record().retiring = value

    @property
    def stops_pending(self) -> int:
        """``system.stop`` calls of it under way (a cancelled one keeps ``retiring`` if any is)."""
        stopping = self._stopping
        return 0 if stopping is None else stopping.stops_pending

    @stops_pending.setter
    def stops_pending(self, value: int) -> None:
        self._stopping_record().stops_pending = value

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why it stopped for good (None until it has)."""
        stopping = self._stopping
        return None if stopping is None else stopping.exit_reason

    @property
    def stop_requested_at(self) -> float | None:
        """When the running instance was asked to stop (None until it is)."""
        stopping = self._stopping
        return None if stopping is None else stopping.requested_at

    @property
    def _draining(self) -> bool:
        """Whether the stop asked for lets the instance first handle what is already in its
        mailbox (subscribers at shutdown): read by its loop only once a stop is asked for."""
        stopping = self._stopping
        return stopping is not None and stopping.draining

    def __repr__(self) -> str:
        return f"<AgentCell {self.id!r} {self.state.value}>"

    @property
    def in_own_task(self) -> bool:
        """True when the caller is this agent's main task (so it cannot wait on itself)."""
        return self._task is not None and trio.lowlevel.current_task() is self._task

    # -- delivery --------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether an instance runs and takes messages (what a group prefers): hibernated
        counts, as a message wakes it."""
        return self.state in _SERVING

    @property
    def gone(self) -> bool:
        """Whether it has stopped for good."""
        return self.state is CellState.STOPPED

    @property
    def leaving(self) -> bool:
        """Whether it has stopped for good, or is stopping for good (its mailbox closed)."""
        stopping = self._stopping
        return self.state is CellState.STOPPED or (stopping is not None and stopping.final)

    @property
    def load(self) -> int:
        """Messages waiting, plus one while a handler runs: what least-loaded balancing uses."""
        return len(self.mailbox) + (self._in_hand is not None)

    def notify(self, payload: Any) -> None:
        """Send this agent a notification from the system (at most once, never raises)."""
        delivery = self.system.delivery
        # Built by the system, so without the checks a sender's envelope gets.
        envelope = Envelope.for_send(
            MessageKind.INFO,
            payload,
            None,
            self.id,
            delivery.notice_options(),
            self.system.current_time(),
        )
        delivery.post(self.endpoint, envelope)

    def refusal(self) -> AgentStopped:
        """The error a call to this agent gets once it has stopped for good."""
        return stopped_error(self.id, self.exit_reason or self._stop_requested or StopReason.NORMAL)

    def stopped_error(self, reason: ExitReason) -> AgentStopped:
        """The error a caller waiting on this agent gets when it stops with ``reason``."""
        return stopped_error(self.id, reason)

    def _undelivered_reason(self) -> DeadLetterReason:
        if self.system.closing:
            return DeadLetterReason.SYSTEM_STOPPED
        return DeadLetterReason.AGENT_STOPPED

    # -- life ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one instance of the agent; its supervisor calls this again for each restart.

        Reports the ref once ``on_start`` is done. Returns when the instance stops normally
        and raises what it crashed with, so that the supervisor can tell the two apart.

        Raises:
            AgentStartFailed: building the instance or ``on_start`` raised.
            Exception: the instance crashed with it.
        """
        prepared = self._prepared()
        if prepared is None:
            self._begin_instance()
        else:
            self.placement = current_child()
        # One coroutine for the instance's whole life (an idle agent's task keeps each frame
        # it awaits through): how it ended for its own end, and then for the agent's.
        self._task = self.mailbox.owner = trio.lowlevel.current_task()
        current_cell.set(self)
        if inherited_deadline.get() != math.inf:  # a set copies the task's context
            inherited_deadline.set(math.inf)
        instance: Instance | None = None
        reason: ExitReason = _KILLED
        settled_as: ExitReason | None = _KILLED
        asleep = False
        # kill() cancels the scope its supervisor runs the instance in: a scope of the cell's
        # own is made only when none does.
        placement = self.placement
        outer = None if placement is None else placement.supervisor.run_scope(placement.id)
        scope = trio.CancelScope() if outer is None else None
        self._instance_scope = outer if outer is not None else scope
        stopping = self._stopping
        if stopping is not None and prepared is None:  # a kill before a prepared run stands
            stopping.killed = False
        if self.system.over_by != math.inf:
            # Begun once the shutdown was cut short (a sleeper woken, a start late to run):
            # cut short as those running then were.
            self.cut_short(self.system.over_by)
        try:
            try:
                # The instance's whole life, ``on_start`` included, can be killed.
                try:
                    with _UNSCOPED if scope is None else scope:
                        if self.state is _HIBERNATED:
                            instance = self.latest
                            assert instance is not None
                            await self._wake_instance(instance)
                        else:
                            if prepared is None:
                                prepared = self.behaviour.build(self)
                            if self.state is _STARTING and prepared.begin is not None:
                                await prepared.begin()
                            instance = self.latest = prepared
                            if self.state is _STARTING:  # else started without waiting
                                self._started()
                            task_status.started(self.ref)
                        while True:
                            ended = await instance.run()
                            if ended is RUN_AGAIN:
                                continue
                            if ended is not None:
                                reason = ended
                                break
                            if await self._fall_asleep(instance):  # idle past hibernate_after
                                asleep = True
                                break
                except trio.Cancelled:
                    stopping = self._stopping
                    if scope is not None or stopping is None or not stopping.killed:
                        raise  # not its own kill: from outside, it goes on out
                    # Its own kill, through its supervisor's scope, ends here as the cell's own
                    # scope would end it (what runs after it either awaits nothing or shields).
                    killed = True
                else:
                    killed = scope is not None and scope.cancelled_caught
                if not asleep:
                    stopping = self._stopping
                    if instance is None:
                        linked = None if stopping is None else stopping.linked_failure
                        if linked is not None:
                            raise AgentStartFailed(
                                f"{self.id!r}: a task it started failed before on_start finished"
                            ) from linked
                        raise AgentStartFailed(f"{self.id!r} was stopped before on_start finished")
                    if killed and stopping is not None and stopping.linked_failure is not None:
                        reason = stopping.linked_failure
            except BaseException as error:
                if instance is not None and not isinstance(error, trio.Cancelled):
                    reason = error  # SystemExit, KeyboardInterrupt: on their way out of Trio
                raise
            finally:
                self._instance_scope = None
                if asleep:
                    self._task = None
                    self.mailbox.disown()
                elif instance is not None:
                    await self._end_instance(instance, reason)
                else:
                    self._settle_links()  # what a failed or cancelled ``on_start`` set up
            settled_as = None if asleep else reason
        except AgentStartFailed as failure:
            settled_as = failure.__cause__ or failure
            raise
        finally:
            if settled_as is not None:
                self._after_instance(settled_as)
        if settled_as is None:  # asleep: its supervisor keeps it, without a task, until woken
            assert self.latest is not None
            raise Hibernate(wake_to_stop=self.latest.cleanup is not None)
        stopping = self._stopping
        if (
            self.state is CellState.STOPPED
            and self.system.closing
            and (stopping is None or not stopping.final)
        ):
            # Ended for good, as every stop is once the system shuts down, but not on its
            # supervisor's request (a crash, a stop of its own): that supervisor is to start it
            # no more, nor count (or give up on) a restart of it meanwhile.
            cause = settled_as if isinstance(settled_as, Exception) else None
            raise FinalExit(f"{self.id!r} ended as the system shuts down") from cause
        if isinstance(settled_as, Exception):
            if stopping is not None and stopping.exit_as is not None:
                raise stopping.exit_as(
                    f"{self.id!r} failed with {bounded_repr(settled_as)}"
                ) from settled_as
            raise settled_as

    def prepare(self) -> Instance:
        """Build the agent's first instance now, in the caller's task, so that a start with
        nothing to wait for (an instance with no ``begin``) need not wait for the agent's own
        task (see :meth:`started_without_wait`). Its supervisor's first run of the cell runs
        it (its ``begin`` first, if it has one); until then it is STARTING. Whoever calls
        this has checked that the system takes new agents.

        Raises:
            AgentStartFailed: building it raised; the agent is settled as after any failed
                start, and stops for good.
        """
        self.instances += 1
        try:
            instance = self.latest = self.behaviour.build(self)
        except AgentStartFailed as failure:
            self._after_instance(failure.__cause__ or failure)
            self.retire()
            raise
        return instance

    def started_without_wait(self, placement: CurrentChild) -> None:
        """Its supervisor counts the prepared instance as started without waiting for its task
        (``Supervisor.start_child_nowait``): it serves, and can be stopped or killed, from now;
        its task takes its messages once it first runs."""
        self.placement = placement
        self._instance_scope = placement.supervisor.run_scope(placement.id)
        self._started()

    def abandon(self) -> None:
        """The start of a prepared instance failed before the instance ever ran (refused or
        cancelled): the agent stops for good, its messages and monitors settled."""
        if self._task is None and self.state is _STARTING and self.latest is not None:
            self.finish(StopReason.NOPROC)

    def _prepared(self) -> Instance | None:
        """The instance :meth:`prepare` built, if no task has run it yet."""
        if self._task is None and (self.state is _STARTING or self.state is _RUNNING):
            return self.latest
        return None

    def _started(self) -> None:
        self.state = transition(self.state, _RUNNING)
        if self.system.starts_seen():  # else nobody hears of it
            self.system.publish(AgentStarted(self.id))

    def _begin_instance(self) -> None:
        if self.state is _HIBERNATED:
            return  # the kept instance wakes: nothing is new (a stop asked meanwhile stands)
        if self.system.closing:
            raise SystemClosed(f"{self.id!r} not started: the system is shutting down")
        self.placement = current_child()
        if self.instances:  # a new cell is STARTING already
            self.state = transition(self.state, _STARTING)
        self.instances += 1
        if self.instances > 1:
            self.system.count_restart()
        self._stop_requested = None
        if self._stopping is not None:
            self._stopping = self._stopping.for_next_instance()

    def _after_instance(self, reason: ExitReason) -> None:
        """Settle the agent after an instance: for good if that stop was final, otherwise
        parked, mailbox open, until its supervisor starts it again or retires it."""
        if isinstance(reason, Exception):
            self.system.count_crash()
        stopping = self._stopping_record()
        stopping.last_reason = reason
        if stopping.final or self.system.closing:
            self.finish(reason)
        else:
            self.state = transition(self.state, CellState.RESTARTING)
        over, stopping.instance_over = stopping.instance_over, None
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
        stopping = self._stopping_record()
        if stopping.instance_over is None:
            stopping.instance_over = trio.Event()
        await stopping.instance_over.wait()

    def format_message(self, payload: Any) -> str:
        """``payload`` as the agent's ``format_message`` gives it (its latest instance's; the
        bounded repr before the first), for logs and error messages."""
        latest = self.latest
        return bounded_repr(payload) if latest is None else latest.format_message(payload)

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
        if self.state is CellState.HIBERNATED:  # stopped asleep by a supervisor with no hook
            self.finish(StopReason.NORMAL if self.retiring else StopReason.SHUTDOWN)
            return
        stopping = self._stopping
        if stopping is None:  # no instance ended: it never ran
            self.finish(StopReason.NORMAL)
            return
        self.finish(StopReason.NORMAL if stopping.retiring else stopping.last_reason)

    # -- hibernation -----------------------------------------------------------------------

    def can_hibernate(self) -> bool:
        """Whether the instance is idle enough to sleep: nothing waiting or in hand, no
        background task of its own alive, no stop asked for, the system not shutting down
        (a stopping supervisor wakes nobody, and a subscriber is to handle what it is sent
        until it stops). Its timers and the replies it deferred do not keep it awake: a timer
        wakes it, a deferred reply needs no task."""
        return (
            not self.system.closing
            and not self._background
            and not self.mailbox
            and self._in_hand is None
            and self._stop_requested is None
        )

    def stops_unseen(self) -> bool:
        """Whether stopping the running instance now would show nothing but its end: it has
        no ``on_stop``, nothing in hand, waiting or owed to a caller, no task of its own, no
        monitor on it, and nothing outside hears of agents' ends. Its supervisor may then stop
        it together with its neighbours, not in turn (see ``ChildSpec.quiet``)."""
        latest = self.latest
        return (
            self.state is CellState.RUNNING
            and latest is not None
            and latest.cleanup is None
            and self._in_hand is None
            and not self.mailbox
            and not self._background
            and not self._watchers
            and not latest.owes_replies()
            and not self.system.stops_seen()
        )

    async def _fall_asleep(self, instance: Instance) -> bool:
        """Let the instance hibernate, unless something came up while its ``on_hibernate``
        ran (then it is woken again, and True is not returned). From the check to the end of
        the task there is no schedule point, so no message can slip in unseen."""
        await instance.hibernate()
        if self.can_hibernate() and trio.current_effective_deadline() != -math.inf:
            self.state = transition(self.state, CellState.HIBERNATED)
            self.endpoint.inbox = self  # as an ActivatingInbox: falling asleep makes nothing
            return True
        await instance.wake()
        return False

    async def _wake_instance(self, instance: Instance) -> None:
        """Run the kept instance again (its ``on_wake``, unless it is woken only to stop)."""
        self.endpoint.inbox = self.mailbox
        self.state = transition(self.state, CellState.RUNNING)
        if self._stop_requested is None and trio.current_effective_deadline() != -math.inf:
            await instance.wake()

    def wake(self) -> None:
        """A message came for the sleeping agent: its supervisor starts the kept instance
        again; then the mailbox takes the next messages directly. (A supervisor that is
        stopping starts nothing: it stops the sleeper, and the message waits meanwhile.)"""
        placement = self.placement
        if placement is not None and placement.supervisor.wake_child(placement.id):
            self.endpoint.inbox = self.mailbox

    def _end_asleep(self, reason: StopReason, *, final: bool) -> None:
        """Stop the sleeping instance without waking it (it has no ``on_stop``): settle what
        it left, as its end would, then wait for a restart or stop for good."""
        if final or self.system.closing:
            self.finish(reason)
            return
        self._settle_sleeper(reason)
        self._stopping_record().last_reason = reason
        self.state = transition(self.state, CellState.RESTARTING)

    def _settle_sleeper(self, reason: ExitReason) -> None:
        self.endpoint.inbox = self.mailbox
        if self.latest is not None:
            self.latest.settle(reason)
        self._settle_links()
        self.system.publish(AgentExited(self.id, reason))

    def exit_as(self, kind: type[EscalatedFailure | FinalExit], *, final: bool) -> None:
        """The running instance's crash is to reach its supervisor as ``kind`` (a directive
        of its behaviour); ``final``: it stops for good, its mailbox closed now."""
        stopping = self._stopping_record()
        stopping.exit_as = kind
        if final:
            stopping.final = True
            self.mailbox.close()

    async def _end_instance(self, instance: Instance, reason: ExitReason) -> None:
        """Settle everything the instance had in hand, then let it clean up."""
        self.state = transition(self.state, CellState.STOPPING)
        in_hand, self._in_hand = self._in_hand, None
        if in_hand is not None:
            crashed = isinstance(reason, BaseException)
            why = DeadLetterReason.HANDLER_CRASHED if crashed else self._undelivered_reason()
            # A handler cut short by a restart (not a stop for good) gets another try.
            stopping = self._stopping
            for_good = stopping is not None and (stopping.final or stopping.retiring)
            runs_again = not (crashed or for_good or self.system.closing)
            self.system.delivery.undelivered(
                in_hand, why, stopped_error(self.id, reason), runs_again=runs_again
            )
        instance.settle(reason)
        self._settle_links()
        if self._background:  # most instances have none: no coroutine for them
            await self._background_ended()
        on_stop = instance.cleanup
        if on_stop is not None:  # a scope costs; most instances have no cleanup
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = min(self.stop_deadline, trio.current_time() + self.shutdown)
                stopping = self._stopping_record()
                stopping.cleanup_scope = cleanup
                try:
                    await on_stop(reason)
                except Exception as error:
                    logger.error("agent %r raised in on_stop", self.id, exc_info=error)
                finally:
                    stopping.cleanup_scope = None
            self._settle_links()  # what on_stop set up (a timer, a monitor) ends with it too
        if self.system.stops_seen():  # else nobody hears of it: no notice is made
            self.system.publish(AgentExited(self.id, reason))

    async def _background_ended(self) -> None:
        """Wait for the background tasks ``_settle_links`` cancelled to end, as a Trio nursery
        waits for its children before it exits: shielded, within the stop's time."""
        background = self._background
        with trio.CancelScope(shield=True) as waiting:
            waiting.deadline = min(self.stop_deadline, trio.current_time() + self.shutdown)
            for scope in list(background):
                if scope in background:  # not ended meanwhile
                    ended = background[scope]
                    if ended is None:
                        ended = background[scope] = trio.Event()
                    await ended.wait()

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
        self.mailbox.close()  # first: its own exit's notice is not for its own mailbox
        if self.state is CellState.HIBERNATED:
            self._settle_sleeper(reason)
        self.state = transition(self.state, CellState.STOPPED)
        self._stopping_record().exit_reason = reason
        for envelope in self.mailbox.drain():
            self._drop(envelope, self._undelivered_reason(), reason)
        if self.endpoint.admission is not None:  # some may wait for its budgets
            for envelope in self.system.delivery.take_stopped(self.endpoint):
                self._drop(envelope, self._undelivered_reason(), reason)
        self.system.retire(self)
        watchers, self._watchers = self._watchers, _NONE_YET
        for monitor, watcher in watchers.items():
            watcher._watching.pop(monitor, None)
            watcher.notify(Down(self.ref, reason, monitor))

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
        if (
            self.state is CellState.HIBERNATED
            and self.endpoint.inbox is not self.mailbox  # not woken: no task is coming
            and self.latest is not None
            and self.latest.cleanup is None
        ):
            # Its supervisor stops it without a task (one with an ``on_stop`` is woken first).
            self._end_asleep(reason, final=final)
            return
        stopping = self._stopping_record()
        if self._stop_requested is None:
            self._stop_requested = reason
            stopping.requested_at = now = self.system.clock.current_time()
            # Never later than a deadline set before (the shutdown's, cut short).
            stopping.deadline = min(stopping.deadline, now + self.shutdown)
            stopping.draining = drain
        if final:
            stopping.final = True
            self.mailbox.close()
        self.mailbox.interrupt_receivers()

    def kill(self) -> None:
        """Cancel the running instance now (its handler is interrupted)."""
        if self._instance_scope is not None:
            self._stopping_record().killed = True
            self._instance_scope.cancel()

    def cut_short(self, deadline: float) -> None:
        """Cancel the running instance now and let its ``on_stop`` (running or to come) run
        until Trio time ``deadline`` at most: the system's shutdown deadline has passed."""
        stopping = self._stopping_record()
        stopping.deadline = min(stopping.deadline, deadline)
        cleanup = stopping.cleanup_scope
        if cleanup is not None:
            cleanup.deadline = min(cleanup.deadline, deadline)
        self.kill()

    @property
    def stop_deadline(self) -> float:
        """When the stop asked for is due to be over (``inf`` if none was asked)."""
        stopping = self._stopping
        return math.inf if stopping is None else stopping.deadline

    @property
    def activity(self) -> str:
        """What the instance is busy with, as logs show it."""
        stopping = self._stopping
        if stopping is not None and stopping.cleanup_scope is not None:
            return "on_stop"
        if self.state is CellState.STARTING:
            return "on_start"
        if self._in_hand is not None:
            return self.describe(self._in_hand)
        return "nothing"

    # -- what handlers ask for through the context ----------------------------------------

    def monitor(self, target: AgentCell, ref: Any) -> MonitorRef:
        """Watch ``target`` (known to the caller as ``ref``): a ``Down`` when it stops."""
        monitor = MonitorRef(target.id)
        if target.state is CellState.STOPPED:
            self.notify(Down(ref, StopReason.NOPROC, monitor))
        else:
            if target._watchers is _NONE_YET:
                target._watchers = {}
            target._watchers[monitor] = self
            if self._watching is _NONE_YET:
                self._watching = {}
            self._watching[monitor] = target
        return monitor

    def demonitor(self, monitor: MonitorRef) -> bool:
        target = self._watching.pop(monitor, None)
        if target is None:
            return False
        target._watchers.pop(monitor, None)
        return True

    def send_after(self, delay: float, payload: Any, target: AgentCell) -> Timer:
        """Notify ``target`` of ``payload`` in ``delay`` seconds, unless the instance ends."""

        def fire() -> None:
            self._timers.pop(timer, None)
            target.notify(payload)

        timer = self.system.timers.call_after(delay, fire)
        timers = self._timers
        if timers is _NONE_YET:
            timers = self._timers = {}
        elif len(timers) >= 8 and not len(timers) & (len(timers) - 1):
            # A cancelled timer stays listed (its cancel does not come here): they go as the
            # list doubles, so that a timer set again at each message stays one entry.
            for cancelled in [listed for listed in timers if not listed.pending]:
                del timers[cancelled]
        timers[timer] = None
        return timer

    def start_background(
        self, async_fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        # Shielded: it ends with its instance (which cancels it), not before, when the system
        # is cancelled from outside. Started once the instance is ending, it ends at once.
        scope = trio.CancelScope(shield=True)
        if self.state is not CellState.RUNNING and self.state is not CellState.STARTING:
            scope.cancel()
        if self._background is _NONE_YET:
            self._background = {}
        self._background[scope] = None
        instance = self.instances

        async def linked() -> None:
            inherited_deadline.set(math.inf)
            with scope:
                try:
                    await async_fn(*args)
                except Exception as error:
                    logger.error("background task of %r failed", self.id, exc_info=error)
                    if instance == self.instances:  # only the instance it belongs to
                        stopping = self._stopping_record()
                        if stopping.linked_failure is None:
                            stopping.linked_failure = error
                            self.kill()
            ended = self._background.pop(scope, None)
            if ended is not None:
                ended.set()

        try:
            self.system.nursery.start_soon(linked)
        except RuntimeError:  # Trio's "Nursery is closed": the system's block has exited
            self._background.pop(scope, None)
            raise SystemClosed("the message system has shut down") from None


def stopped_error(agent: AgentId, reason: ExitReason) -> AgentStopped:
    """The error callers see when ``agent`` stopped before replying."""
    if isinstance(reason, StopReason):
        return AgentStopped(f"{agent!r} stopped ({reason.value}) before replying")
    error = AgentStopped(f"{agent!r} crashed with {bounded_repr(reason)} before replying")
    error.__cause__ = reason
    return error
