"""Hibernation's inbox: what stands in a sleeping agent's endpoint and wakes it.

An agent idle past its ``hibernate_after`` gives up its task (and its supervisor's run of it)
and keeps its cell: its id, name, ref, mailbox and the instance with its state. Delivery only
ever sees an endpoint's inbox, so that while the agent sleeps its endpoint holds the agent's
cell, an :class:`ActivatingInbox`, instead of the mailbox: a message goes into the same mailbox
as always, and then asks the agent's supervisor to start the kept instance again. The mailbox
stands in the endpoint again at once, so that the messages after the first cost nothing more.

The cell is its own sleeping inbox (this class is one of its bases, with no slots of its own)
so that falling asleep makes nothing: a million sleepers would otherwise each keep an object
that only points back at its cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from .._core.messages import Envelope
from .._primitives.mailbox import spend_send_budget

if TYPE_CHECKING:
    from .._primitives.mailbox import Mailbox

__all__ = ["ActivatingInbox"]


class _Sleeper(Protocol):
    """What the inbox needs of the cell it is a base of."""

    @property
    def mailbox(self) -> Mailbox: ...

    def wake(self) -> None: ...


class ActivatingInbox:
    """A sleeping agent's inbox: its mailbox, which wakes the agent on the first message
    (the ``Inbox`` seam of ``_core/protocols.py``). A base of the agent's cell.

    As an inbox it has a length (the messages waiting), but a cell is true whatever its mailbox
    holds, as an object without a length is."""

    __slots__ = ()

    def put_nowait(self: _Sleeper, envelope: Envelope) -> None:
        """Put ``envelope`` in the sleeper's mailbox and wake it; raises as the mailbox does
        (the agent is not woken then)."""
        self.mailbox.put_nowait(envelope)
        self.wake()

    async def put(self: _Sleeper, envelope: Envelope) -> None:
        """:meth:`put_nowait`, as a cancellation point (a put that raises ``Cancelled`` put
        nothing); a schedule point once every ``SEND_BUDGET`` puts, as the mailbox's own put.
        A sleeper's mailbox is empty, so there is always room to wait for."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self.mailbox.put_nowait(envelope)
        self.wake()
        await spend_send_budget()

    def has_room(self: _Sleeper) -> bool:
        return self.mailbox.has_room()

    def __len__(self: _Sleeper) -> int:
        return len(self.mailbox)

    def __bool__(self) -> bool:
        return True
