"""Hibernation's inbox: what stands in a sleeping agent's endpoint and wakes it.

An agent idle past its ``hibernate_after`` gives up its task (and its supervisor's run of it)
and keeps its cell: its id, name, ref, mailbox and the instance with its state. Delivery only
ever sees an endpoint's inbox, so that while the agent sleeps its endpoint holds an
:class:`ActivatingInbox` instead of the mailbox: a message goes into the same mailbox as
always, and then asks the agent's supervisor to start the kept instance again. The mailbox
stands in the endpoint again at once, so that the messages after the first cost nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .._core.messages import Envelope
from .._primitives.mailbox import spend_send_budget

if TYPE_CHECKING:
    from .cell import AgentCell

__all__ = ["ActivatingInbox"]


class ActivatingInbox:
    """A sleeping agent's inbox: its mailbox, which wakes the agent on the first message
    (the ``Inbox`` seam of ``_core/protocols.py``)."""

    __slots__ = ("_cell",)

    def __init__(self, cell: AgentCell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<ActivatingInbox of {self._cell.id!r}>"

    def put_nowait(self, envelope: Envelope) -> None:
        """Put ``envelope`` in the sleeper's mailbox and wake it; raises as the mailbox does
        (the agent is not woken then)."""
        cell = self._cell
        cell.mailbox.put_nowait(envelope)
        cell.wake()

    async def put(self, envelope: Envelope) -> None:
        """:meth:`put_nowait`, as a cancellation point (a put that raises ``Cancelled`` put
        nothing); a schedule point once every ``SEND_BUDGET`` puts, as the mailbox's own put.
        A sleeper's mailbox is empty, so there is always room to wait for."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self.put_nowait(envelope)
        await spend_send_budget()

    def has_room(self) -> bool:
        return self._cell.mailbox.has_room()

    def __len__(self) -> int:
        return len(self._cell.mailbox)
