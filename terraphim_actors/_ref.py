"""``AgentRef``: the handle other code holds to talk to an agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._checks import check_seconds
from ._ids import AgentId
from ._messages import Envelope, MessageKind, Priority, options_for
from ._protocol import ReplyHandle
from ._task_context import current_cell, inherited_deadline
from .errors import CallTimeout, CallToSelf

if TYPE_CHECKING:
    from ._cell import AgentCell

__all__ = ["AgentRef"]


class AgentRef:
    """A stable, hashable handle to one agent, valid across its restarts.

    Messages sent through one ref from one sender arrive in order within a priority. The
    blocking sends (``call``, ``cast``, ``info``) checkpoint and wait for room in a bounded
    mailbox that blocks; ``cast_nowait`` and ``info_nowait`` never wait.
    """

    __slots__ = ("_cell", "id")

    def __init__(self, cell: AgentCell) -> None:
        self._cell = cell
        #: The agent's identity.
        self.id: AgentId = cell.id

    def __repr__(self) -> str:
        return f"AgentRef({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def name(self) -> str | None:
        """The name the agent was spawned with, if any."""
        return self.id.name

    @property
    def alive(self) -> bool:
        """False once the agent has stopped for good."""
        return not self._cell.stopped.is_set()

    async def cast(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """Send a fire-and-forget message; returns once the mailbox accepted it.

        Raises:
            MailboxFull: the mailbox is bounded, full, and rejects.
        """
        await self._cell.deliver(self._envelope(MessageKind.CAST, payload, priority))

    def cast_nowait(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """:meth:`cast` without waiting or checkpointing.

        Raises:
            MailboxFull: the mailbox is bounded and full.
        """
        self._cell.deliver_nowait(self._envelope(MessageKind.CAST, payload, priority))

    async def info(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """Send an info message (handled by ``handle_info``); raises as :meth:`cast`."""
        await self._cell.deliver(self._envelope(MessageKind.INFO, payload, priority))

    def info_nowait(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """:meth:`info` without waiting or checkpointing; raises as :meth:`cast_nowait`."""
        self._cell.deliver_nowait(self._envelope(MessageKind.INFO, payload, priority))

    async def call(
        self, payload: Any, timeout: float = 5.0, *, priority: Priority = Priority.NORMAL
    ) -> Any:
        """Send a request and wait for the reply.

        Called from inside a handler, the call also ends no later than the call being handled.

        Raises:
            CallTimeout: no reply within ``timeout`` seconds (or the inherited deadline).
            CallFailed: the callee raised while handling it (the original is ``__cause__``).
            AgentStopped: the callee stopped or crashed before replying.
            CallToSelf: the agent called itself.
            MailboxFull: the mailbox is bounded, full, and rejects.
            InvalidConfig: ``timeout`` is not a positive number of seconds.
        """
        check_seconds("timeout", timeout)
        cell = self._cell
        if cell.in_own_task:
            raise CallToSelf(f"{self.id!r} called itself and would wait forever")
        own_deadline = trio.current_time() + timeout
        # The envelope carries the tightest deadline the caller is under, so that the callee
        # can skip work nobody waits for: this call's, the call being handled, or a Trio scope.
        deadline = min(own_deadline, inherited_deadline.get(), trio.current_effective_deadline())
        handle = ReplyHandle(deadline)
        envelope = self._envelope(MessageKind.CALL, payload, priority)
        envelope.reply = handle
        envelope.deadline = deadline
        with trio.move_on_at(deadline):
            await cell.deliver(envelope)
            return await handle.wait_unbounded()
        handle.abandon()
        waited = f"{timeout} s" if deadline == own_deadline else "its caller's deadline"
        raise CallTimeout(f"{self.id!r} did not reply to {payload!r} within {waited}")

    def _envelope(self, kind: MessageKind, payload: Any, priority: Priority) -> Envelope:
        sender = current_cell.get()
        return Envelope.for_send(
            kind,
            payload,
            None if sender is None else sender.id,
            self.id,
            options_for(priority),
            self._cell.system.clock.current_time(),
        )
