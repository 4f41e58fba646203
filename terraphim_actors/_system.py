"""The message system: the registry of agents, their tasks, and its way in and out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import trio

from ._agent import Agent
from ._cell import AgentCell, CellState, settle_undelivered
from ._checks import check_count, check_instance, check_seconds, validator
from ._dead_letters import DeadLetter, DeadLetterOffice, DeadLetterReason
from ._ids import AgentId
from ._mailbox import Mailbox, MailboxConfig, MailboxStats
from ._messages import Envelope, info
from ._notifications import StopReason, SystemShutdown
from ._ref import AgentRef
from ._timers import TimerService
from .errors import AgentNotFound, CallToSelf, DuplicateAgent, InvalidConfig, SystemClosed

__all__ = ["MessageSystem", "MessageSystemConfig", "SystemStats", "open_message_system"]


@attrs.frozen(kw_only=True)
class MessageSystemConfig:
    """How a message system behaves.

    Attributes:
        mailbox: the mailbox of an agent spawned without one of its own.
        shutdown_timeout: seconds a stopping agent gets before it is cancelled.
        dead_letter_capacity: how many recent dead letters are kept (all are counted).
    """

    mailbox: MailboxConfig = attrs.field(
        factory=MailboxConfig, validator=validator(check_instance, MailboxConfig)
    )
    shutdown_timeout: float = attrs.field(default=5.0, validator=validator(check_seconds))
    dead_letter_capacity: int = attrs.field(
        default=1000, validator=validator(check_count, minimum=1)
    )


@attrs.frozen(kw_only=True)
class SystemStats:
    """A snapshot of a message system's counters."""

    #: Agents running now.
    agents_running: int
    #: Agents ever spawned.
    agents_spawned: int
    #: Agents that crashed (their handler, background task or ``on_start`` raised).
    agent_crashes: int
    #: Messages accepted into any mailbox, including those of agents that have stopped.
    messages_received: int
    #: Messages taken out of any mailbox.
    messages_processed: int
    #: Dead letters ever recorded.
    dead_letters: int
    #: Dead letters ever recorded, per reason.
    dead_letters_by_reason: Mapping[DeadLetterReason, int]
    #: Seconds since the system opened.
    uptime: float


class MessageSystem:
    """Agents, their mailboxes and the routes between them, inside one Trio nursery.

    Open one with :func:`open_message_system`; it stops every agent when its block exits.
    """

    def __init__(self, config: MessageSystemConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.nursery = nursery
        self.timers = TimerService()
        #: The run's clock, kept to stamp envelopes without Trio's lookup of it per message.
        self.clock = trio.lowlevel.current_clock()
        self.closing = False
        self._dead_letters = DeadLetterOffice(config.dead_letter_capacity)
        self._cells: dict[AgentId, AgentCell] = {}
        self._manual: dict[AgentId, Mailbox] = {}
        self._names: dict[str, AgentId] = {}
        self._subscribers: list[AgentCell] = []
        self._opened_at = trio.current_time()
        self._spawned = 0
        self._crashes = 0
        self._retired_received = 0
        self._retired_processed = 0

    def __repr__(self) -> str:
        return f"<MessageSystem with {len(self._cells)} agents>"

    # -- agents ----------------------------------------------------------------------------

    async def spawn(
        self,
        agent_class: type[Agent],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
    ) -> AgentRef:
        """Start an agent and return its ref once its ``on_start`` has finished.

        Args:
            agent_class: an :class:`Agent` subclass; each start builds ``agent_class(*args)``.
            name: a unique name to find it by (``whereis``) and to address it with.
            mailbox: its mailbox configuration (default: the system's).
            shutdown: seconds it gets to stop before it is cancelled (default: the system's).

        Raises:
            DuplicateAgent: ``name`` is taken.
            AgentStartFailed: its constructor or ``on_start`` raised (the cause is attached).
            InvalidConfig: an argument is out of range or of the wrong type.
            SystemClosed: the system is shutting down.
        """
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise InvalidConfig(f"agent_class must be an Agent subclass, got {agent_class!r}")
        if mailbox is not None:
            check_instance("mailbox", mailbox, MailboxConfig)
        if shutdown is not None:
            check_seconds("shutdown", shutdown)
        agent_id = self._claim(name)
        cell = AgentCell(
            self,
            agent_class,
            args,
            agent_id,
            self.config.mailbox if mailbox is None else mailbox,
            self.config.shutdown_timeout if shutdown is None else shutdown,
        )
        self._cells[agent_id] = cell
        self._spawned += 1
        ref: AgentRef = await self.nursery.start(cell.run)
        return ref

    def whereis(self, name: str | AgentId) -> AgentRef | None:
        """The ref of the running agent with that name or id, or ``None``."""
        agent_id = self._names.get(name) if isinstance(name, str) else name
        cell = None if agent_id is None else self._cells.get(agent_id)
        return None if cell is None else cell.ref

    def ref(self, name: str | AgentId) -> AgentRef:
        """The ref of the running agent with that name or id.

        Raises:
            AgentNotFound: no running agent has that name or id.
        """
        ref = self.whereis(name)
        if ref is None:
            raise AgentNotFound(f"no running agent is registered as {name!r}")
        return ref

    @property
    def agents(self) -> list[AgentRef]:
        """Refs of every agent that has not stopped for good, in spawn order."""
        return [cell.ref for cell in self._cells.values()]

    async def stop(self, ref: AgentRef) -> None:
        """Stop an agent for good and return once it has stopped.

        It finishes the message in hand (within its shutdown time; then it is cancelled),
        runs ``on_stop``; calls it had taken fail with ``AgentStopped``, and the messages still
        waiting become dead letters (calls among them fail with ``AgentStopped``).

        Raises:
            CallToSelf: an agent awaited its own stop (use ``ctx.stop()`` instead).
        """
        check_instance("ref", ref, AgentRef)
        cell = ref._cell
        if cell.in_own_task:
            raise CallToSelf("an agent cannot wait for its own stop: use ctx.stop()")
        cell.request_stop(StopReason.NORMAL)
        await cell.wait_stopped(trio.current_time() + cell.shutdown)

    def subscribe(self, ref: AgentRef) -> None:
        """Send ``ref`` an info for every agent start and exit, and the system's shutdown.

        Subscribing twice changes nothing: each notification arrives once.
        """
        if ref._cell not in self._subscribers:
            self._subscribers.append(ref._cell)

    # -- seed-compatible routing ------------------------------------------------------------

    def register_agent(self, agent_id: AgentId, config: MailboxConfig | None = None) -> Mailbox:
        """Register a mailbox driven by hand, and return it; ``send_message`` then reaches it.

        Raises:
            DuplicateAgent: the id, or its name, is taken.
            SystemClosed: the system is shutting down.
        """
        check_instance("agent_id", agent_id, AgentId)
        if agent_id in self._cells or agent_id in self._manual:
            raise DuplicateAgent(f"{agent_id!r} is already registered")
        mailbox = Mailbox(agent_id, config)
        self._claim(agent_id.name, agent_id)
        self._manual[agent_id] = mailbox
        return mailbox

    async def send_message(self, envelope: Envelope) -> None:
        """Deliver ``envelope`` to its recipient (an ``AgentId`` or a registered name).

        Raises:
            AgentNotFound: no agent or registered mailbox has that id or name.
            MailboxFull: the recipient's mailbox is bounded, full, and rejects.
            AgentStopped: the envelope is a call and its recipient has stopped.
            InvalidConfig: the envelope has no recipient.
        """
        recipient = envelope.recipient
        if recipient is None:
            raise InvalidConfig("the envelope has no recipient")
        agent_id = self._names.get(recipient) if isinstance(recipient, str) else recipient
        cell = None if agent_id is None else self._cells.get(agent_id)
        if cell is not None:
            await cell.deliver(envelope)
            return
        mailbox = None if agent_id is None else self._manual.get(agent_id)
        if mailbox is None:
            raise AgentNotFound(f"no agent is registered as {recipient!r}")
        await mailbox.send(envelope)

    # -- what was not delivered, and statistics -----------------------------------------------

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first (``dead_letter_capacity`` at most)."""
        return self._dead_letters.recent()

    def dead_letter(self, envelope: Envelope, reason: DeadLetterReason, detail: str = "") -> None:
        """File a message that will not be delivered."""
        self._dead_letters.record(envelope, reason, detail)

    def get_stats(self) -> tuple[SystemStats, list[MailboxStats]]:
        """The system's counters, and those of every live mailbox (agents' and manual ones)."""
        mailboxes = [cell.mailbox.stats() for cell in self._cells.values()]
        mailboxes += [mailbox.stats() for mailbox in self._manual.values()]
        system = SystemStats(
            agents_running=sum(cell.state is CellState.RUNNING for cell in self._cells.values()),
            agents_spawned=self._spawned,
            agent_crashes=self._crashes,
            messages_received=self._retired_received + sum(s.messages_received for s in mailboxes),
            messages_processed=self._retired_processed
            + sum(s.messages_processed for s in mailboxes),
            dead_letters=self._dead_letters.total,
            dead_letters_by_reason=self._dead_letters.by_reason(),
            uptime=trio.current_time() - self._opened_at,
        )
        return system, mailboxes

    # -- used by agent cells -------------------------------------------------------------------

    def publish(self, notification: object) -> None:
        """Send a lifecycle notification to every subscriber that still takes messages.

        A subscriber that is stopping would only turn it into a dead letter (its own exit,
        for one), so it is skipped.
        """
        for subscriber in self._subscribers:
            if not subscriber.mailbox.closed:
                subscriber.post(info(notification, recipient=subscriber.id))

    def retire(self, cell: AgentCell) -> None:
        """Forget an agent that has stopped for good, keeping its counts in the totals."""
        if self._cells.get(cell.id) is cell:
            del self._cells[cell.id]
        if cell.id.name is not None and self._names.get(cell.id.name) == cell.id:
            del self._names[cell.id.name]
        stats = cell.mailbox.stats()
        self._retired_received += stats.messages_received
        self._retired_processed += stats.messages_processed
        if isinstance(cell.exit_reason, Exception):
            self._crashes += 1
        if cell in self._subscribers:
            self._subscribers.remove(cell)

    # -- in and out -------------------------------------------------------------------------

    def _claim(self, name: str | None, agent_id: AgentId | None = None) -> AgentId:
        if self.closing:
            raise SystemClosed("the message system is shutting down")
        if name is not None and not isinstance(name, str):
            raise InvalidConfig(f"name must be a str or None, got {name!r}")
        if name is not None and name in self._names:
            raise DuplicateAgent(f"an agent named {name!r} is already registered")
        agent_id = AgentId(name=name) if agent_id is None else agent_id
        if name is not None:
            self._names[name] = agent_id
        return agent_id

    async def _shut_down(self) -> None:
        """Stop every agent, then settle what the manual mailboxes still hold.

        Subscribers hear of the shutdown first and are stopped last, once they have handled
        what was sent to them (the shutdown, the other agents' exits), so that they can watch
        the system go down. Within each group the newest agent is asked first.
        """
        self.closing = True
        self.publish(SystemShutdown())
        subscribed = set(self._subscribers)
        cells = list(reversed(self._cells.values()))
        await self._stop_all([cell for cell in cells if cell not in subscribed])
        subscribers = [cell for cell in cells if cell in subscribed]
        started = trio.current_time()
        for cell in subscribers:
            await cell.wait_idle(started + cell.shutdown)
        await self._stop_all(subscribers, started)
        for mailbox in self._manual.values():
            mailbox.close()
            for envelope in mailbox.drain():
                settle_undelivered(
                    self,
                    envelope,
                    DeadLetterReason.SYSTEM_STOPPED,
                    SystemClosed("the message system shut down"),
                )

    async def _stop_all(self, cells: list[AgentCell], started: float | None = None) -> None:
        """Ask ``cells`` to stop (reason ``SHUTDOWN``) and wait for each, within its time."""
        for cell in cells:
            cell.request_stop(StopReason.SHUTDOWN)
        if started is None:
            started = trio.current_time()
        for cell in cells:
            await cell.wait_stopped(started + cell.shutdown)


@contextlib.asynccontextmanager
async def open_message_system(
    config: MessageSystemConfig | None = None,
) -> AsyncIterator[MessageSystem]:
    """Run a message system inside the caller's Trio code, for the length of the block.

    On leaving the block, every agent stops (``on_stop`` runs), and every message not yet
    handled becomes a dead letter; an error raised in the block propagates unchanged.

    Raises:
        InvalidConfig: ``config`` is not a ``MessageSystemConfig``.
    """
    if config is None:
        config = MessageSystemConfig()
    else:
        check_instance("config", config, MessageSystemConfig)
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        system = MessageSystem(config, nursery)
        nursery.start_soon(system.timers.run)
        try:
            yield system
        except BaseException as error:
            body_error = error
        finally:
            with trio.CancelScope(shield=True):
                await system._shut_down()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
