"""The message system: the registry of agents, the supervision tree they run in, and its way
in and out."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import signal
import sys
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from typing import Any

import attrs
import trio

from supervisor import (
    ChildIsCaller,
    ChildSpec,
    ChildStartFailed,
    CurrentChild,
    RestartBackoff,
    RestartStrategy,
    RestartType,
    Supervisor,
    SupervisorNotRunning,
)

from .._behaviour.agent import Agent
from .._behaviour.agent_checks import check_agent_class
from .._behaviour.refs import AgentRef, PoolRef
from .._behaviour.spec import AgentStarter, agent_child_spec, start_agent, start_agent_now
from .._behaviour.system_api import SystemStats
from .._behaviour.thread_portal import ThreadPortal
from .._core.bounded_repr import LazyText, bounded_repr
from .._core.checks import check_count, check_instance, check_seconds, validator
from .._core.ids import AgentId
from .._core.instruments import Instrument, Instruments, instruments_tuple
from .._core.messages import Envelope, MessageKind, check_envelope
from .._core.notifications import AgentExited, AgentStarted, StopReason, SystemShutdown
from .._core.protocols import ClusterMembership, ClusterSpec, Journal
from .._core.reply_to import PendingCalls
from .._core.threads import check_thread, current_thread_id
from .._delivery.admission import admission_stats
from .._delivery.dead_letters import DeadLetter, DeadLetterOffice, DeadLetterReason
from .._delivery.journal import NO_JOURNAL
from .._delivery.pipeline import DeliveryConfig, DeliveryManager
from .._primitives.admission import Budget, budgets_from
from .._primitives.balancing import Balancer, LoadBalancing
from .._primitives.dedup import HandledMessages
from .._primitives.mailbox import (
    Mailbox,
    MailboxConfig,
    MailboxStats,
    ThreadBoundMailbox,
    refill_send_budget,
    send_budget_spent,
)
from .._primitives.timers import TimerService
from .._process.cell import AgentCell, CellState
from .._process.context_vars import current_cell
from .._routing.directory import LocalDirectory
from .._routing.endpoint import Endpoint
from .._routing.groups import Group
from .._routing.router import Router, RouterConfig
from ..errors import (
    AgentNotFound,
    AgentStartFailed,
    CallToSelf,
    DuplicateAgent,
    InvalidConfig,
    InvalidMessage,
    SystemClosed,
)
from .replay import Replays, endpoint_window, replay_into
from .shutdown import ShutdownWatch
from .signals import ShutdownSignals, check_main_thread, receiving_signals

__all__ = ["MessageSystem", "MessageSystemConfig", "SystemStats", "open_message_system"]

#: The instrument hook each lifecycle notification is also told to.
_LIFECYCLE_HOOKS = {AgentStarted: "agent_started", AgentExited: "agent_exited"}

#: ``spawn``'s ``admission`` when none is given: recognised by identity, so that a spawn
#: without budgets skips their checks (a list or tuple of budgets, as given, is checked).
_NO_ADMISSION: tuple[Budget, ...] = ()


#: What a journal must offer: the methods of the ``Journal`` protocol, read from it.
_JOURNAL_METHODS = tuple(
    name for name, member in vars(Journal).items() if callable(member) and not name.startswith("_")
)


def _check_journal(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    missing = [name for name in _JOURNAL_METHODS if not callable(getattr(value, name, None))]
    if missing:
        raise InvalidConfig(
            f"{attribute.name} must be a Journal (such as SqliteJournal);"
            f" {bounded_repr(value)} has no " + ", ".join(f"{name}()" for name in missing)
        )


def _check_cluster(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A cluster must be a ``ClusterSpec``: its ``join()``, called with no argument when the
    system opens, makes the membership. A callable ``join`` is not enough: a str has one
    (``str.join``, which takes an argument), and a server's URL is the likeliest mistake,
    which would then pass here and fail untyped when the system opens."""
    if value is None:
        return
    join = getattr(value, "join", None)
    try:
        inspect.signature(join).bind()  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not callable, takes arguments, or has no signature
        raise InvalidConfig(
            f"{attribute.name} must be a ClusterConfig (terraphim_actors.cluster), got"
            f" {bounded_repr(value)}"
        ) from None


@attrs.frozen(kw_only=True)
class MessageSystemConfig:
    """How a message system behaves.

    Attributes:
        mailbox: the mailbox of an agent spawned without one of its own.
        shutdown_timeout: seconds a stopping agent gets before it is cancelled.
        shutdown_deadline: seconds the whole shutdown may take (default: no cap, each agent
            gets its shutdown time, one after another, a pool's members together); past it,
            every agent still running is cancelled at once and its ``on_stop`` runs with
            ``StopReason.KILLED`` for at most one more second.
        dead_letter_capacity: how many recent dead letters are kept (all are counted).
        max_restarts: restarts the root supervisor allows within ``max_seconds``; above that
            it gives up and the system ends with ``RestartIntensityExceeded``.
        max_seconds: the window in which the root supervisor counts restarts.
        restart_backoff: wait before restarting an agent that keeps crashing (default: none,
            as in OTP).
        delivery: the delivery guarantee and retry schedule of every message, unless its
            ``MessageOptions`` say otherwise.
        router: circuit breakers, and a custom router if any.
        instruments: observers of the system's events (``Instrument`` instances), for tracing
            and metrics; none by default, which costs a dict lookup per event.
        journal: where accepted messages are kept across a crash or a restart (see "Durable
            delivery" in the README), such as ``terraphim_actors.journal.SqliteJournal``;
            none by default: nothing outlives the process.
        cluster: the cluster this system joins as a node (see "Beyond one process" in the
            README), a ``terraphim_actors.cluster.ClusterConfig``; none by default: the
            agents of this process are all there is.
    """

    mailbox: MailboxConfig = attrs.field(
        factory=MailboxConfig, validator=validator(check_instance, MailboxConfig)
    )
    shutdown_timeout: float = attrs.field(default=5.0, validator=validator(check_seconds))
    shutdown_deadline: float | None = attrs.field(
        default=None, validator=validator(check_seconds, optional=True)
    )
    dead_letter_capacity: int = attrs.field(
        default=1000, validator=validator(check_count, minimum=1, maximum=sys.maxsize)
    )
    max_restarts: int = attrs.field(default=5, validator=validator(check_count, minimum=0))
    max_seconds: float = attrs.field(default=60.0, validator=validator(check_seconds))
    restart_backoff: RestartBackoff | None = attrs.field(
        default=None, validator=validator(check_instance, RestartBackoff, optional=True)
    )
    delivery: DeliveryConfig = attrs.field(
        factory=DeliveryConfig, validator=validator(check_instance, DeliveryConfig)
    )
    router: RouterConfig = attrs.field(
        factory=RouterConfig, validator=validator(check_instance, RouterConfig)
    )
    instruments: tuple[Instrument, ...] = attrs.field(default=(), converter=instruments_tuple)
    journal: Journal = attrs.field(default=NO_JOURNAL, validator=_check_journal, repr=False)
    cluster: ClusterSpec | None = attrs.field(default=None, validator=_check_cluster)


class MessageSystem:
    """Agents, their mailboxes and the routes between them, under one root supervisor.

    Open one with :func:`open_message_system`; it stops every agent when its block exits.
    Every agent is a child of a supervisor: of the root (``spawn``), or of a subtree
    (``start_supervisor``).

    Drive it from the thread it was opened in: its methods that send, wait or change state
    raise ``WrongThread`` from any other thread (which sends through ``system.from_thread``,
    or runs a method with ``trio.from_thread.run``); reads such as ``whereis`` and
    ``get_stats`` work from any.
    """

    def __init__(self, config: MessageSystemConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.nursery = nursery
        #: The thread of the Trio run the system opened in: the only one that may send, wait
        #: or change state (Trio's objects belong to their run's thread).
        self.thread_id = current_thread_id()
        #: The documented way in from another thread: blocking ``call`` and ``cast`` that run
        #: in this system's thread (through its Trio token), from any thread but this one.
        self.from_thread = ThreadPortal(self.thread_id, trio.lowlevel.current_trio_token())
        self.timers = TimerService()
        #: The run's clock, kept to stamp envelopes without Trio's lookup of it per message.
        self.clock = trio.lowlevel.current_clock()
        #: ``clock.current_time``, bound once for every agent's loop to share: a loop that
        #: bound its own would keep 64 bytes more in each idle agent.
        self.current_time = self.clock.current_time
        self.closing = False
        #: The signal that started the shutdown (``handle_signals=True``), or None: a program
        #: may exit with ``128 + signum`` after the block, as a process killed by it would.
        self.shutdown_signal: signal.Signals | None = None
        #: Why the shutdown is to be cut short (see :meth:`cut_shutdown_short`), or None.
        self._cut_short: str | None = None
        self._shutdown_watch: ShutdownWatch | None = None
        self.root = Supervisor(
            strategy=RestartStrategy.ONE_FOR_ONE,
            max_restarts=config.max_restarts,
            max_seconds=config.max_seconds,
            backoff=config.restart_backoff,
            forget_ended=True,  # spawned agents come and go; keep no record of those gone
            name="root",
        )
        #: The installed instruments, by the hooks they override (empty: no hook is called).
        self.instruments = Instruments(config.instruments)
        #: The instruments a ref asks for each send's headers, or ``None`` when none adds any
        #: (installed with the system: none now is none for good, one ``is`` test per send).
        self.headers_from = self.instruments if "outgoing_headers" in self.instruments else None
        #: This system's node in its cluster (``None``: it is not in one).
        self.cluster: ClusterMembership | None = (
            None if config.cluster is None else config.cluster.join()
        )
        self.router = Router(config.router, self)
        #: The delivery middleware: guarantees, retries, and their statistics.
        self.delivery = DeliveryManager(
            config.delivery,
            config.router.circuit_breaker,
            clock=self.clock,
            timers=self.timers,
            router=self.router,
            has_stopped=self.has_stopped,
            file_dead_letter=self.file_dead_letter,
            describe=self.describe,
            closing=lambda: self.closing,
            journal=config.journal,
            settlement_listener=None if self.cluster is None else self.cluster.settled,
            instruments=self.instruments,
        )
        #: Calls whose reply address was encoded as data (to cross a process boundary), for
        #: the answers that come back as data; a local call never enters it.
        self.pending_calls = PendingCalls()
        self._dead_letters = DeadLetterOffice(config.dead_letter_capacity)
        self._dead_letter_subscribers: list[AgentCell] = []
        self.registry: LocalDirectory[AgentCell] = LocalDirectory()
        self.registry.beyond = self.cluster
        #: What starts each member of each pool running, by the pool's id.
        self._pool_starters: dict[AgentId, list[AgentStarter]] = {}
        #: The agent classes spawned here, whose hooks were found callable as written: a set
        #: of the classes themselves is read faster than the checks' own weak one at each spawn.
        self._checked_classes: set[type[Agent]] = set()
        self._subscribers: list[AgentCell] = []
        self._opened_at = trio.current_time()
        self._spawned = 0
        self._crashes = 0
        self._restarts = 0
        self._retired_received = 0
        self._retired_processed = 0
        #: What the journal kept from an earlier run for agents yet to be spawned, by name
        #: (``None`` without a journal, or until it is open).
        self._replays: Replays | None = None

    def __repr__(self) -> str:
        return f"<MessageSystem with {len(self.registry.cells)} agents>"

    # -- agents ----------------------------------------------------------------------------

    async def spawn(
        self,
        agent_class: type[Agent],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        restart: RestartType = RestartType.PERMANENT,
        handler_timeout: float | None = None,
        hibernate_after: float | None = None,
        admission: Sequence[Budget] = _NO_ADMISSION,
        **kwargs: Any,
    ) -> AgentRef:
        """Start an agent under the root supervisor; returns its ref once ``on_start`` is done.

        Args:
            agent_class: an :class:`Agent` subclass; each start builds
                ``agent_class(*args, **kwargs)``, ``kwargs`` being the keyword arguments that
                are not options of ``spawn`` itself.
            name: a unique name to find it by (``whereis``) and to address it with.
            mailbox: its mailbox configuration (default: the system's).
            shutdown: seconds it gets to stop before it is cancelled (default: the system's).
            restart: when the supervisor starts it again: ``PERMANENT`` (after any exit),
                ``TRANSIENT`` (after a crash), ``TEMPORARY`` (never).
            handler_timeout: seconds a handler may run before it is cancelled and fails with
                ``HandlerTimeout`` (default: the class's ``handler_timeout``).
            hibernate_after: seconds idle after which it hibernates, giving up its task until
                a message wakes it (``None``, the default: the class's ``hibernate_after``;
                ``math.inf``: never, whatever the class says).
            admission: budgets it admits messages by (``RateLimit``, ``TokenBudget``,
                ``ConcurrencyLimit``), behind its circuit breaker; a message they refuse waits
                in delivery until they let it through, or is refused if its deadline would
                pass first.

        Raises:
            DuplicateAgent: ``name`` is taken.
            AgentStartFailed: its constructor or ``on_start`` raised (the cause is attached).
            InvalidConfig: an argument is out of range or of the wrong type.
            SystemClosed: the system is shutting down.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.spawn")
        budgets = None if admission is _NO_ADMISSION else budgets_from(admission)
        starter = self._starter(
            agent_class, args, name, mailbox, shutdown, restart, handler_timeout, kwargs
        )
        if budgets is not None:
            starter.setup_endpoint = functools.partial(Endpoint.install_budgets, budgets=budgets)
        if hibernate_after is not None:
            _set_hibernate_after(starter, hibernate_after)
        cluster = self.cluster
        # Perhaps nothing to wait for (see ``start_agent_now``): a cancellation point, and a
        # schedule point once every ``SEND_BUDGET`` such spawns, as an awaited cast is.
        at_once = agent_class.on_start is Agent.on_start
        if cluster is not None and name is not None:
            await cluster.claim(name, starter.agent_id)
            at_once = False  # a failed start releases the claim, as ``start_agent`` reports it
        elif at_once:
            await trio.lowlevel.checkpoint_if_cancelled()
        try:
            if at_once and start_agent_now(self.root, starter):
                if send_budget_spent():
                    await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                await start_agent(self.root, starter)
        except ChildStartFailed as failure:
            if cluster is not None:
                cluster.release(starter.agent_id, StopReason.NOPROC)
            raise _unwrap(failure)  # noqa: B904 - the agent's error keeps its own cause
        except SupervisorNotRunning:
            if cluster is not None:
                cluster.release(starter.agent_id, StopReason.NOPROC)
            raise SystemClosed("the message system is shutting down") from None
        finally:
            if starter.cell is not None:
                starter.cell.abandon()  # built by ``start_agent_now``, and never run
        assert starter.cell is not None  # it has started
        ref: AgentRef = starter.cell.ref
        return ref

    def agent_spec(
        self,
        agent_class: type[Agent],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        restart: RestartType = RestartType.PERMANENT,
        significant: bool = False,
        handler_timeout: float | None = None,
        hibernate_after: float | None = None,
        **kwargs: Any,
    ) -> ChildSpec:
        """A child spec that runs an agent, for :meth:`start_supervisor` or any ``Supervisor``.

        The agent is created (and its name claimed) when the spec is first started. Arguments
        as for :meth:`spawn`; ``significant`` as for ``ChildSpec``.
        """
        check_thread(self.thread_id, "system.agent_spec", sync=True)
        starter = self._starter(
            agent_class, args, name, mailbox, shutdown, restart, handler_timeout, kwargs
        )
        _set_hibernate_after(starter, hibernate_after)
        return agent_child_spec(starter, significant=significant)

    async def start_supervisor(
        self,
        children: list[ChildSpec],
        *,
        strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        max_seconds: float = 60.0,
        backoff: RestartBackoff | None = None,
        name: str | None = None,
        restart: RestartType = RestartType.PERMANENT,
    ) -> Supervisor:
        """Start a subtree under the root: a supervisor of agents (see :meth:`agent_spec`)
        and further supervisors (``Supervisor(...).as_child(id)``). Returns it once every
        child has started.

        If the subtree gives up (too many restarts), the root handles that as the crash of
        one child: it restarts the whole subtree, or gives up in turn.

        Raises:
            AgentStartFailed: a child failed to start (the supervisor's error is the cause).
            SystemClosed: the system is shutting down.
            supervisor.InvalidSpec: an option or a child spec is invalid.
            supervisor.DuplicateChild: two children share an id.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.start_supervisor")
        subtree = Supervisor(
            children,
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff,
            name=name,
        )
        try:
            await self.root.start_child(subtree.as_child(subtree.name, restart=restart))
        except ChildStartFailed as failure:
            raise AgentStartFailed(f"{subtree.name} failed to start: {failure}") from failure
        except SupervisorNotRunning:
            raise SystemClosed("the message system is shutting down") from None
        return subtree

    async def spawn_pool(
        self,
        agent_class: type[Agent],
        *args: Any,
        size: int,
        name: str | None = None,
        strategy: LoadBalancing = LoadBalancing.ROUND_ROBIN,
        key: Callable[[Any], Hashable] | None = None,
        seed: int | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        max_restarts: int | None = None,
        max_seconds: float | None = None,
        handler_timeout: float | None = None,
        admission: Sequence[Budget] = (),
        fallback: AgentRef | None = None,
        hibernate_after: float | None = None,
        **kwargs: Any,
    ) -> PoolRef:
        """Start ``size`` instances of an agent under a supervisor of their own, behind one ref
        that spreads messages over them (see :class:`LoadBalancing`).

        Members are named ``"{name}-{i}"`` (unnamed if the pool is), restart one for one
        within ``max_restarts`` in ``max_seconds`` (default: the system's intensity), and are
        skipped while their circuit is open, or while they wait to restart if another member
        runs. Messages through the pool share one exactly-once window, so one retried through
        the pool is not handled again by another member. The pool's name finds its ref. At
        shutdown (or ``system.stop(pool)``) the members are asked to stop all at once and
        waited for together, each within its shutdown time, as OTP stops simple_one_for_one
        children; the pool takes its place among the root's children, newest first.

        Args:
            key: for ``CONSISTENT_HASH``, what to hash of a message's payload (default: the
                payload itself, by its ``repr``).
            seed: for ``RANDOM``, seeds the choice.
            handler_timeout: as for :meth:`spawn`, for each member.
            admission: as for :meth:`spawn`, shared by the members: one budget for the pool.
            fallback: where a message sent through the pool goes instead when every
                member's circuit is open, or its budgets could not admit it before its
                deadline (an agent's or another pool's ref; counted as a fallback).
            hibernate_after: as for :meth:`spawn`, for each member: an idle member sleeps,
                and a message the pool gives it wakes it.
            kwargs: as for :meth:`spawn`: each member is ``agent_class(*args, **kwargs)``.

        Raises:
            DuplicateAgent: ``name``, or a member's name, is taken.
            AgentStartFailed: a member failed to start (the supervisor's error is the cause).
            InvalidConfig: an argument is out of range or of the wrong type.
            SystemClosed: the system is shutting down.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.spawn_pool")
        check_count("size", size, minimum=1)
        check_instance("strategy", strategy, LoadBalancing)
        if key is not None and not callable(key):
            raise InvalidConfig(f"key must be a function of the payload, got {bounded_repr(key)}")
        if seed is not None:
            check_count("seed", seed, minimum=0)
        if max_restarts is not None:
            check_count("max_restarts", max_restarts, minimum=0)
        if max_seconds is not None:
            check_seconds("max_seconds", max_seconds)
        budgets = budgets_from(admission)
        if fallback is not None:
            check_instance("fallback", fallback, AgentRef)
        config = self.config
        starters = [
            self._starter(
                agent_class,
                args,
                None if name is None else f"{name}-{position}",
                mailbox,
                shutdown,
                RestartType.PERMANENT,
                handler_timeout,
                kwargs,
            )
            for position in range(size)
        ]
        for starter in starters:
            _set_hibernate_after(starter, hibernate_after)
        pool_id = self._claim(name)
        if self.cluster is not None and name is not None:
            try:
                await self.cluster.claim(name, pool_id)
            except BaseException:
                self.registry.release(pool_id)
                raise
        members = Supervisor(
            [agent_child_spec(starter) for starter in starters],
            max_restarts=config.max_restarts if max_restarts is None else max_restarts,
            max_seconds=config.max_seconds if max_seconds is None else max_seconds,
            backoff=config.restart_backoff,
            stop_concurrently=True,  # alike and independent: busy members do not add up
            name=f"pool {name or pool_id!r}",
        )
        group = Group(
            pool_id,
            size,
            Balancer(strategy, size, key=key, seed=seed),
            HandledMessages(self.delivery.config.dedup_window),
            self.clock,
            self.router,
        )
        group.budgets = budgets
        group.fallback = None if fallback is None else fallback._address
        for position, starter in enumerate(starters):
            starter.setup_endpoint = functools.partial(group.join, position)
        self.router.pools[pool_id] = group
        self._pool_starters[pool_id] = starters

        def retire(_child: CurrentChild) -> None:
            self._retire_pool(group)

        try:
            await self.root.start_child(attrs.evolve(members.as_child(pool_id), retire=retire))
        except ChildStartFailed as failure:
            self.forget_pool(group)
            raise AgentStartFailed(
                f"pool {bounded_repr(name)} failed to start: {failure}"
            ) from failure
        except SupervisorNotRunning:
            self.forget_pool(group)
            raise SystemClosed("the message system is shutting down") from None
        if self._replays is not None and name is not None:
            # Once its members run: spread over them as a message sent to the pool now is.
            replay_into(
                self._replays,
                name,
                lambda: group.window,
                self.clock.current_time(),
                functools.partial(self._replay_to_pool, group),
            )
        return PoolRef(group, self)

    def _replay_to_pool(self, group: Group, envelope: Envelope) -> None:
        """Deliver a message the journal kept for a pool's name to the member the pool
        chooses, as a send through its ref would: never through the router, which a custom
        router would bend."""
        self.delivery.replay(group.choose(envelope), envelope)

    def forget_pool(self, group: Group) -> None:
        """Unregister a pool that has stopped for good."""
        group.live = False
        self.router.pools.pop(group.id, None)
        self._pool_starters.pop(group.id, None)
        self.registry.release(group.id)
        if self.cluster is not None:
            self.cluster.release(group.id, StopReason.NORMAL)

    def _retire_pool(self, group: Group) -> None:
        """The pool will not run again: its members stop for good and its name is freed."""
        for starter in self._pool_starters.get(group.id, ()):
            starter.retire()
        self.forget_pool(group)

    def _pool_members(self, group: Group) -> list[AgentCell]:
        """The members of a pool that have not stopped for good, in pool order."""
        starters = self._pool_starters.get(group.id, ())
        return [s.cell for s in starters if s.cell is not None and not s.cell.gone]

    async def _stop_pool(self, ref: PoolRef) -> None:
        pool = ref.group
        members = self._pool_members(pool)
        if current_cell.get() in members:
            raise CallToSelf("a pool member cannot wait for its own pool's stop")
        if not ref.alive:
            return
        if self.closing:
            raise SystemClosed("the message system is shutting down: it stops every pool")
        with _stopping_for_good(members):  # what they had in hand is not for a next instance
            await self.root.remove_child(pool.id)
        self._retire_pool(pool)

    def _starter(
        self,
        agent_class: type[Agent],
        args: tuple[Any, ...],
        name: str | None,
        mailbox: MailboxConfig | None,
        shutdown: float | None,
        restart: RestartType,
        handler_timeout: float | None,
        kwargs: dict[str, Any],
    ) -> AgentStarter:
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise InvalidConfig(
                f"agent_class must be an Agent subclass, got {bounded_repr(agent_class)}"
            )
        if agent_class not in self._checked_classes:
            check_agent_class(agent_class)
            self._checked_classes.add(agent_class)
        if name is not None and not isinstance(name, str):
            raise InvalidConfig(f"name must be a str or None, got {bounded_repr(name)}")
        if mailbox is not None:
            check_instance("mailbox", mailbox, MailboxConfig)
        if shutdown is not None:
            check_seconds("shutdown", shutdown)
        check_instance("restart", restart, RestartType)
        if handler_timeout is None:
            handler_timeout = agent_class.handler_timeout
        if handler_timeout is not None:
            check_seconds("handler_timeout", handler_timeout)
        if agent_class.hibernate_after is not None:
            check_seconds(f"{agent_class.__name__}.hibernate_after", agent_class.hibernate_after)
        if self.closing:
            raise SystemClosed("the message system is shutting down")
        if self.registry.taken(name):
            raise DuplicateAgent(f"an agent named {bounded_repr(name)} is already registered")
        return AgentStarter(
            self,
            agent_class,
            args,
            AgentId(name=name),
            self.config.mailbox if mailbox is None else mailbox,
            self.config.shutdown_timeout if shutdown is None else shutdown,
            restart,
            handler_timeout,
            kwargs,
        )

    def whereis(self, name: str | AgentId) -> AgentRef | None:
        """The ref of the running agent (or pool) with that name or id, or ``None``."""
        agent_id = self.registered_id(name)
        if agent_id is None:
            return None
        group = self.router.pools.get(agent_id)
        if group is not None:
            return PoolRef(group, self)
        cell = self.registry.cells.get(agent_id)
        if cell is not None:
            ref: AgentRef = cell.ref
            return ref
        endpoint = self.registry.endpoint(agent_id)  # an agent on another node
        return None if endpoint is None else AgentRef(endpoint, self)

    def registered_id(self, address: AgentId | str | None) -> AgentId | None:
        """The id that ``address`` (a name or an id) stands for, if anything answers to it."""
        return self.registry.resolve(address)

    def live_cell(self, agent_id: AgentId) -> AgentCell | None:
        """The agent running (or restarting) under ``agent_id``, if any."""
        return self.registry.cells.get(agent_id)

    def live_cells(self) -> list[AgentCell]:
        """Every agent that has not stopped for good."""
        return list(self.registry.cells.values())

    def ref(self, name: str | AgentId) -> AgentRef:
        """The ref of the running agent with that name or id.

        Raises:
            AgentNotFound: no running agent has that name or id.
        """
        ref = self.whereis(name)
        if ref is None:
            raise AgentNotFound(f"no running agent is registered as {bounded_repr(name)}")
        return ref

    @property
    def agents(self) -> list[AgentRef]:
        """Refs of every agent that has not stopped for good, in spawn order."""
        return [cell.ref for cell in self.registry.cells.values()]

    async def stop(self, ref: AgentRef) -> None:
        """Stop an agent (or a whole pool) for good and return once it has stopped.

        It finishes the message in hand (within its shutdown time; then it is cancelled),
        runs ``on_stop``; calls it had taken fail with ``AgentStopped``, and the messages still
        waiting become ``AGENT_STOPPED`` dead letters: an agent stopped for good refuses, as a
        dead process does in Erlang, so they are not retried.

        Cancelled before the agent stopped, it changes nothing; once it has returned, the agent
        stays stopped, even if its subtree restarts later.

        Raises:
            CallToSelf: an agent awaited its own stop (use ``ctx.stop()`` instead).
            InvalidConfig: the agent runs on another node (stop it there).
            SystemClosed: the system is shutting down (it stops every agent itself).
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.stop")
        check_instance("ref", ref, AgentRef)
        if isinstance(ref, PoolRef):
            await self._stop_pool(ref)
            return
        cell = ref._local_agent("system.stop")
        if cell.in_own_task:
            raise CallToSelf("an agent cannot wait for its own stop: use ctx.stop()")
        placement = cell.placement
        if cell.gone:
            if placement is not None:  # stopped by its supervisor: now forgotten for good
                await _remove_child(placement)
            return
        if self.closing:
            raise SystemClosed("the message system is shutting down: it stops every agent")
        kill_timer = None
        if cell.state is CellState.STARTING:
            # In ``on_start`` it holds its supervisor, which cannot stop it until it returns.
            kill_timer = self.timers.call_after(cell.shutdown, cell.kill)
        try:
            with _stopping_for_good([cell]):
                if placement is not None:
                    await _remove_child(placement)
            # From here the stop is done, whatever cancels the wait for its end.
            if cell.has_instance:
                # Its supervisor is stopping it (perhaps waiting for the caller): this stop
                # is for good, and ends within its shutdown time without that supervisor.
                cell.request_stop(StopReason.NORMAL, final=True)
                if kill_timer is None:
                    kill_timer = self.timers.call_after(cell.shutdown, cell.kill)
                await cell.wait_instance_over()
            cell.retire()
        finally:
            if kill_timer is not None:
                kill_timer.cancel()

    def subscribe(self, ref: AgentRef) -> None:
        """Send ``ref`` an info for every agent start and exit, and the system's shutdown.

        Subscribing twice changes nothing: each notification arrives once.

        Raises:
            InvalidConfig: ``ref`` is not an ``AgentRef``, or is one of an agent on another
                node.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.subscribe", sync=True)
        check_instance("ref", ref, AgentRef)
        cell = ref._local_agent("system.subscribe")
        if cell not in self._subscribers:
            self._subscribers.append(cell)

    def subscribe_dead_letters(self, ref: AgentRef) -> None:
        """Send ``ref`` an info carrying each :class:`DeadLetter` from now on.

        Dead letters about those notices themselves are kept but not sent again, so that a
        subscriber that cannot keep up does not feed itself.

        Raises:
            InvalidConfig: ``ref`` is not an ``AgentRef``, or is one of an agent on another
                node.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.subscribe_dead_letters", sync=True)
        check_instance("ref", ref, AgentRef)
        cell = ref._local_agent("system.subscribe_dead_letters")
        if cell not in self._dead_letter_subscribers:
            self._dead_letter_subscribers.append(cell)

    def is_subscriber(self, cell: AgentCell) -> bool:
        """Whether ``cell`` hears of agents starting and stopping (see :meth:`subscribe`)."""
        return cell in self._subscribers

    # -- seed-compatible routing ------------------------------------------------------------

    def register_agent(self, agent_id: AgentId, config: MailboxConfig | None = None) -> Mailbox:
        """Register a mailbox driven by hand, and return it; ``send_message`` then reaches it.

        The mailbox belongs to the system's thread as the system does: its sends, receives
        and ``close`` raise ``WrongThread`` from any other.

        Raises:
            DuplicateAgent: the id, or its name, is taken.
            SystemClosed: the system is shutting down.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.register_agent", sync=True)
        check_instance("agent_id", agent_id, AgentId)
        if agent_id in self.registry.cells or agent_id in self.registry.mailboxes:
            raise DuplicateAgent(f"{agent_id!r} is already registered")
        mailbox = ThreadBoundMailbox(agent_id, config, thread_id=self.thread_id)
        self._claim(agent_id.name, agent_id)
        self.registry.mailboxes[agent_id] = mailbox
        return mailbox

    async def send_message(self, envelope: Envelope) -> None:
        """Deliver ``envelope`` to its recipient (an ``AgentId``, a registered name, or a pool;
        or where the configured ``MessageRouter`` says), by its guarantee.

        A call's reply arrives on its handle (see ``call``); a failure is retried or raised as
        for a ref. A cast or an info the journal keeps (see "Durable delivery" in the README)
        is committed to it when this returns. A hand-driven mailbox (``register_agent``) gets
        the message once, outside the delivery layer and the journal, since the system cannot
        see it handled.

        Raises:
            AgentNotFound: at most once, no agent or mailbox answers to the recipient.
            MailboxFull: at most once, the recipient's mailbox is bounded, full, and rejects;
                or an agent sent to itself from its own task, its mailbox full and blocking.
            AgentStopped: at most once, the envelope is a call and its recipient has stopped.
            DeliveryFailed: a call could not be delivered within its retries.
            InvalidMessage: ``envelope`` is not an ``Envelope``, or is a call without a reply
                slot; or the journal keeps it and cannot encode it (nothing is sent).
            UnencodablePayload: the journal keeps it and cannot encode its payload.
            JournalError: the journal keeps it and could not commit it: it was accepted and
                is delivered in this run, but would not survive a crash.
            InvalidConfig: the envelope has no recipient, and no custom router to choose one;
                or the custom router returned something other than refs.
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.send_message")
        if not isinstance(envelope, Envelope):
            raise InvalidMessage(f"expected an Envelope, got {type(envelope).__name__}")
        check_envelope(envelope)  # again: ``evolve`` and the per-attempt fields check nothing
        if envelope.kind is MessageKind.CALL and envelope.reply is None:
            # Its handler's answer would have nowhere to go: the recipient would crash on it.
            raise InvalidMessage("a call needs a reply slot: build it with call(...)")
        if envelope.recipient is None and self.router.config.custom_router is None:
            raise InvalidConfig("the envelope has no recipient (and no custom router)")
        if "outgoing_headers" in self.instruments:  # the sender's headers kept as they are
            headers = self.instruments.outgoing_headers(
                envelope.kind, envelope.recipient, envelope.headers
            )
            if headers is not envelope.headers:
                envelope = envelope.evolve(headers=headers)
        agent_id = self.registered_id(envelope.recipient)
        mailbox = None if agent_id is None else self.registry.mailboxes.get(agent_id)
        if mailbox is not None:
            await mailbox.send(envelope)
            return
        # Its options filled in from the configuration, and its retries given again (a
        # message sent again is the same message: same id, a fresh first attempt).
        envelope = envelope.evolve(options=self.delivery.resolve(envelope.options), attempt=0)
        for cell, copy in self.router.targets_of(envelope):
            if copy.kind is MessageKind.CALL:
                await self.delivery.send_call(cell, copy)
            else:
                await self.delivery.send(cell, copy)

    # -- what was not delivered, and statistics -----------------------------------------------

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first (``dead_letter_capacity`` at most)."""
        return self._dead_letters.recent()

    def describe(self, envelope: Envelope) -> str:
        """``envelope`` for a log, its payload as its recipient's ``Agent.format_message``
        gives it (the bounded repr when no agent answers to the recipient)."""
        return str(self._described(envelope))

    def _described(self, envelope: Envelope) -> object:
        """:meth:`describe`, formatted only when a log record needs it; the recipient is the
        one that answers now, even if it has stopped by then."""
        recipient = self.registry.resolve(envelope.recipient)
        cell = None if recipient is None else self.registry.cells.get(recipient)
        return envelope if cell is None else LazyText(cell.describe, envelope)

    def file_dead_letter(
        self, envelope: Envelope, reason: DeadLetterReason, detail: str = ""
    ) -> None:
        """Keep and count a message that will not be delivered, and tell the subscribers.

        The delivery layer calls this once it has given up on a message it had accepted (and
        counts it in its own statistics, telling the journal); the system calls it for a
        hand-driven mailbox's.
        """
        letter = self._dead_letters.record(
            envelope, reason, detail, described=self._described(envelope)
        )
        if "dead_lettered" in self.instruments:
            self.instruments.call("dead_lettered", letter)
        if isinstance(envelope.payload, DeadLetter):
            return  # a notice about a dead letter that could not be delivered
        for subscriber in self._dead_letter_subscribers:
            if not subscriber.mailbox.closed:
                subscriber.notify(letter)

    def get_stats(self) -> tuple[SystemStats, list[MailboxStats]]:
        """The system's counters, and those of every live mailbox (agents' and manual ones).

        A read: it works from any thread (a snapshot taken while the system runs on).
        """
        # Copies taken at once, so that agents coming and going in the system's thread meanwhile
        # do not break the iteration of a reader in another.
        cells = list(self.registry.cells.values())
        mailboxes = [cell.mailbox.stats() for cell in cells]
        mailboxes += [mailbox.stats() for mailbox in list(self.registry.mailboxes.values())]
        system = SystemStats(
            agents_running=sum(cell.state is CellState.RUNNING for cell in cells),
            agents_hibernated=sum(cell.state is CellState.HIBERNATED for cell in cells),
            agents_spawned=self._spawned,
            agent_crashes=self._crashes,
            agent_restarts=self._restarts,
            messages_received=self._retired_received + sum(s.messages_received for s in mailboxes),
            messages_processed=self._retired_processed
            + sum(s.messages_processed for s in mailboxes),
            dead_letters=self._dead_letters.total,
            dead_letters_by_reason=self._dead_letters.by_reason(),
            uptime=self.clock.current_time() - self._opened_at,  # no Trio run needed
            admission=admission_stats(list(self.registry.endpoints()), self.clock.current_time()),
        )
        return system, mailboxes

    # -- used by agent cells -------------------------------------------------------------------

    def publish(self, notification: object) -> None:
        """Send a lifecycle notification to every subscriber that still takes messages.

        A subscriber that is stopping would only turn it into a dead letter (its own exit,
        for one), so it is skipped.
        """
        hook = _LIFECYCLE_HOOKS.get(notification.__class__)
        if hook is not None and hook in self.instruments:  # its fields are the arguments
            fields = attrs.astuple(notification, recurse=False)  # type: ignore[arg-type]
            self.instruments.call(hook, *fields)
        for subscriber in self._subscribers:
            if not subscriber.mailbox.closed:
                subscriber.notify(notification)

    def starts_seen(self) -> bool:
        """Whether anything outside the agents hears of each one's start: a subscriber, or
        an instrument of ``agent_started`` (else no ``AgentStarted`` is made)."""
        return bool(self._subscribers) or "agent_started" in self.instruments

    def stops_seen(self) -> bool:
        """Whether anything outside the agents hears of each one's end, in order: a
        subscriber, an instrument of ``agent_exited``, or the cluster (which releases names)."""
        return (
            bool(self._subscribers)
            or "agent_exited" in self.instruments
            or self.cluster is not None
        )

    def register(self, cell: AgentCell) -> None:
        """Make a new agent reachable by its id and name.

        Raises:
            DuplicateAgent: its name is taken.
            SystemClosed: the system is shutting down.
        """
        agent_id = cell.id
        if agent_id.name is not None or self.closing:  # else there is nothing to claim
            self._claim(agent_id.name, agent_id)
        self.registry.add(cell)
        self._spawned += 1
        if self._replays is not None and cell.id.name is not None:
            # Before anything can be sent to it: what was sent before the restart comes first.
            endpoint = cell.endpoint
            replay_into(
                self._replays,
                cell.id.name,
                functools.partial(endpoint_window, endpoint, self.delivery.config.dedup_window),
                self.clock.current_time(),
                functools.partial(self.delivery.replay, endpoint),
            )

    def _open_journal(self) -> None:
        """Read what the journal (running) kept from an earlier run, for the agents of those
        names to take over as they are spawned."""
        self._replays = Replays(self.config.journal)

    async def flush(self) -> None:
        """Wait for the journal's commit of everything told to it so far: the messages it
        keeps that were accepted, their handler runs, settlements and dead letters (returns
        at once without a journal). ``cast_nowait`` does not wait for its commit; this is how
        to wait for many at once.

        Raises:
            JournalError: the commit holding what was pending failed, or a commit failed since
                the last flush (what it held, ``cast_nowait`` messages among it, would not
                survive a crash).
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.flush")
        journal = self.config.journal
        if journal is NO_JOURNAL:
            await trio.lowlevel.checkpoint()
            return
        await journal.flush()

    def count_crash(self) -> None:
        """Count an agent instance that ended with an exception (for :meth:`stats`)."""
        self._crashes += 1

    def count_restart(self) -> None:
        """Count an agent instance started again after the first (for :meth:`stats`)."""
        self._restarts += 1

    def has_stopped(self, address: AgentId | str | None) -> bool:
        """Whether an agent (or pool) by that id stopped for good lately, with nothing
        running under its id since, or ``address`` is a pool whose members have all left for
        good: a message for it is refused, not retried."""
        if self.registry.has_stopped(address):
            return True
        pool_id = self.registry.resolve(address)
        group = None if pool_id is None else self.router.pools.get(pool_id)
        return group is not None and group.emptied

    def retire(self, cell: AgentCell) -> None:
        """Forget an agent that has stopped for good, keeping its counts in the totals."""
        self.registry.remove(cell)
        if self.cluster is not None:
            self.cluster.release(cell.id, cell.exit_reason or StopReason.NORMAL)
        received, processed = cell.mailbox.counts
        self._retired_received += received
        self._retired_processed += processed
        if cell in self._subscribers:
            self._subscribers.remove(cell)
        if cell in self._dead_letter_subscribers:
            self._dead_letter_subscribers.remove(cell)

    # -- in and out -------------------------------------------------------------------------

    def _claim(self, name: str | None, agent_id: AgentId | None = None) -> AgentId:
        if self.closing:
            raise SystemClosed("the message system is shutting down")
        return self.registry.claim(name, agent_id)

    async def _shut_down(self) -> None:
        """Stop every agent through the supervision tree, then settle the manual mailboxes.

        The root stops its children newest first, each within its shutdown time, as OTP does:
        an agent stopping can still call those started before it. A pool's members stop
        together, as OTP's simple_one_for_one children do. Subscribers hear of the
        shutdown first and handle what they were sent before they stop, so that they can watch
        the system go down.

        It logs its start, and names each agent that holds it up for more than a second; the
        config's ``shutdown_deadline`` caps it (see :class:`ShutdownWatch`).
        """
        self.closing = True
        watch = self._shutdown_watch = ShutdownWatch(self, self.config.shutdown_deadline)
        if self._cut_short is not None:  # asked for while the block's body was still leaving
            watch.cut_short(self._cut_short)
        try:
            await self._stop_agents()
        finally:
            self._shutdown_watch = None
            watch.close()

    @property
    def over_by(self) -> float:
        """Trio time by which every agent must be over: ``inf`` until the shutdown is cut
        short (see :meth:`cut_shutdown_short`)."""
        watch = self._shutdown_watch
        return math.inf if watch is None else watch.over_by

    def cut_shutdown_short(self, why: str) -> None:
        """Cancel every agent still running at once, as a passed ``shutdown_deadline`` does:
        each ``on_stop`` runs with ``StopReason.KILLED`` within one more second. A second
        signal asks for this (``handle_signals``); asked before the shutdown has started, it
        applies as soon as it does. ``why`` completes the log line: "shutdown {why}: ...".

        Raises:
            WrongThread: called from a thread other than the system's.
        """
        check_thread(self.thread_id, "system.cut_shutdown_short", sync=True)
        self._cut_short = why
        if self._shutdown_watch is not None:
            self._shutdown_watch.cut_short(why)

    async def _stop_agents(self) -> None:
        self.publish(SystemShutdown())
        for cell in self.registry.cells.values():
            if cell.state is CellState.STARTING:
                # Its supervisor waits for ``on_start`` before it can stop anything: its one
                # shutdown time starts now and covers the rest of its start and its stop.
                cell.request_stop(StopReason.SHUTDOWN, final=True)
                self.timers.call_after(cell.shutdown, cell.kill)
        await self.root.stop()
        for cell in list(self.registry.cells.values()):
            cell.finish(StopReason.SHUTDOWN)  # those between instances when the tree stopped
        for group in list(self.router.pools.values()):
            self._retire_pool(group)
        self.delivery.settle_waiting()
        for mailbox in self.registry.mailboxes.values():
            mailbox.close()
            for envelope in mailbox.drain():
                handle = envelope.reply
                if handle is not None and handle.pending:
                    handle.fail(SystemClosed("the message system shut down"))
                else:
                    self.file_dead_letter(envelope, DeadLetterReason.SYSTEM_STOPPED)
        self.from_thread.close()


@contextlib.contextmanager
def _stopping_for_good(cells: list[AgentCell]) -> Iterator[None]:
    """Mark agents as stopped for good by their supervisor's next stop of them, for the length
    of a ``system.stop``; cancelled before they stopped, it takes the mark back, unless
    another stop of them is still under way."""
    for cell in cells:
        cell.stops_pending += 1
        cell.retiring = True
    try:
        yield
    except BaseException:
        for cell in cells:
            if cell.stops_pending == 1 and not cell.gone:
                cell.retiring = False
        raise
    finally:
        for cell in cells:
            cell.stops_pending -= 1


def _set_hibernate_after(starter: AgentStarter, hibernate_after: float | None) -> None:
    """Give ``starter``'s agent the ``hibernate_after`` of a spawn (its class's if ``None``;
    never if ``math.inf``, as a Trio deadline of ``inf`` is never, whatever its class says).

    Raises:
        InvalidConfig: it is not a number of seconds above 0 (finite, or ``math.inf``).
    """
    if hibernate_after == math.inf:
        starter.hibernate_after = None
    elif hibernate_after is not None:
        check_seconds("hibernate_after", hibernate_after)
        starter.hibernate_after = hibernate_after


async def _remove_child(placement: CurrentChild) -> None:
    """Have an agent's supervisor stop it and forget it for good."""
    try:
        await placement.supervisor.remove_child(placement.id)
    except ChildIsCaller as error:  # a task of the agent's own subtree, not its main task
        raise CallToSelf(f"{error}: use ctx.stop()") from error


def _unwrap(failure: ChildStartFailed) -> Exception:
    """What ``spawn`` raises for a child that failed to start: the agent's own error."""
    cause = failure.__cause__
    if isinstance(cause, AgentStartFailed | DuplicateAgent | SystemClosed):
        return cause
    error = AgentStartFailed(str(failure))
    error.__cause__ = cause
    return error


async def _run_cluster(
    cluster: ClusterMembership,
    system: MessageSystem,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``system``'s node of its cluster within ``scope``, cancelled once its agents have
    stopped."""
    with scope:
        await cluster.run(system, task_status=task_status)


async def _run_journal(
    journal: Journal,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``journal``'s writer within ``scope``, cancelled only once the system is done."""
    with scope:
        await journal.run(task_status=task_status)


@contextlib.asynccontextmanager
async def open_message_system(
    config: MessageSystemConfig | None = None,
    *,
    handle_signals: bool = False,
) -> AsyncIterator[MessageSystem]:
    """Run a message system inside the caller's Trio code, for the length of the block.

    On leaving the block, every agent stops (``on_stop`` runs), and every message not yet
    handled becomes a dead letter; an error raised in the block propagates unchanged.

    With ``handle_signals``, SIGINT and SIGTERM shut the system down gracefully for as long
    as the block lasts (its shutdown included): the first cancels the block's body, whose exit
    stops every agent as a cancellation from outside does (newest first, each within its
    shutdown time); a second cuts that shutdown short as ``shutdown_deadline`` does (every
    agent still running is cancelled at once, each ``on_stop`` runs with ``StopReason.KILLED``
    within one more second). Leaving the block then raises ``KeyboardInterrupt`` if a SIGINT
    came (the program ends as a Ctrl+C ends a Python program; the error the block would have
    raised otherwise, if any, is its ``__context__``); after SIGTERM alone it raises what it
    would have raised without the signal: nothing, once the cancelled body has left, so the
    code after the block runs and the program can end with status 0, as an OTP node stopped by
    SIGTERM does. ``system.shutdown_signal`` tells which signal started the shutdown. Without
    ``handle_signals`` nothing is caught: Trio raises ``KeyboardInterrupt`` where the program
    is when Ctrl+C comes, and SIGTERM ends the process at once.

    Raises:
        InvalidConfig: ``config`` is not a ``MessageSystemConfig``; ``handle_signals`` is not
            a bool, or is true outside the main thread (where Python cannot catch signals).
        RestartIntensityExceeded: the root supervisor gave up (too many restarts); the block
            is cancelled and every agent stopped, so that no failure goes unnoticed.
        JournalError: the configured journal cannot be opened (a corrupt or foreign file, a
            newer schema, an unwritable file); nothing was started.
        KeyboardInterrupt: with ``handle_signals``, a SIGINT came.
    """
    if config is None:
        config = MessageSystemConfig()
    else:
        check_instance("config", config, MessageSystemConfig)
    check_instance("handle_signals", handle_signals, bool)
    if handle_signals:
        check_main_thread()
    refill_send_budget()
    body_error: BaseException | None = None
    # Cancelled by the first signal: the same path out as a cancellation from outside.
    body = trio.CancelScope()
    signals: ShutdownSignals | None = None
    # A cancellation from outside reaches the block's body (the root supervisor's task and the
    # system's timer service, which fires retries too, is shielded from it), whose exit then
    # stops the agents in order while the timers still serve them.
    services = trio.CancelScope(shield=True)
    # The journal's writer, shielded too: it stops last, once every agent has stopped, and
    # commits the settlements the shutdown made.
    writer = trio.CancelScope(shield=True)
    # The node in the cluster, shielded as well: it leaves once every agent has stopped.
    membership = trio.CancelScope(shield=True)
    with receiving_signals(handle_signals) as receiver:
        async with trio.open_nursery() as nursery:
            system = MessageSystem(config, nursery)
            if "system_opened" in system.instruments:  # built whole, before any agent starts
                system.instruments.call("system_opened", system)
            if receiver is not None:
                signals = ShutdownSignals(system, body)

            async def serve() -> None:
                with services:
                    async with trio.open_nursery() as service_tasks:
                        service_tasks.start_soon(system.timers.run)  # retries' too
                        if signals is not None and receiver is not None:
                            # Shielded with the services: a signal during a shutdown that a
                            # cancellation from outside started still cuts it short.
                            service_tasks.start_soon(signals.serve, receiver)

            try:
                if config.journal is not NO_JOURNAL:  # before anything else: it may refuse
                    await nursery.start(_run_journal, config.journal, writer)
                    system._open_journal()
                if system.cluster is not None:  # before any agent: names are claimed through it
                    await nursery.start(_run_cluster, system.cluster, system, membership)
                nursery.start_soon(serve)
                async with system.root:  # raises RestartIntensityExceeded if it gives up
                    try:
                        with body:
                            yield system
                    finally:
                        with trio.CancelScope(shield=True):
                            await system._shut_down()
            except BaseException as error:
                body_error = error  # raised unchanged, not in the nursery's exception group
            finally:
                services.cancel()
                membership.cancel()
                writer.cancel()
                nursery.cancel_scope.cancel()
    if signals is not None and signals.interrupted:
        interrupt = KeyboardInterrupt()
        interrupt.__context__ = body_error
        raise interrupt
    if body_error is not None:
        raise body_error
