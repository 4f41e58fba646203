"""A call's reply address as data, and the table that turns it back into the waiting caller.

In one process a call's reply travels through its live slot (``envelope.reply``, a
:class:`~terraphim_actors._core.reply.ReplyHandle`) and nothing else: the ordinary call path
never touches this module. A reply that must cross a process boundary (a call written to the
wire or a journal) cannot carry a live object, so whoever encodes a live call registers its
slot in the sending system's :class:`PendingCalls`, which gives a :class:`ReplyTo`: plain data
(this process's node and the call's correlation id) that the codec writes with the message.
The far side answers to that address; the transport that brings the answer back hands it to
:meth:`PendingCalls.answer`, which finds the slot and wakes the caller.

The node is the process's incarnation, the random high bits of every message id it makes
(:data:`~terraphim_actors._core.ids.COUNTER_BITS`), so a reply address needs no configured
name; the correlation id is the call's message id, already unique across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .ids import COUNTER_BITS, MessageId, new_message_id
from .reply import ReplyHandle

if TYPE_CHECKING:
    from .messages import Envelope

__all__ = ["PendingCalls", "ReplyTo", "this_node"]


@attrs.frozen
class ReplyTo:
    """Where a call's answer goes, as data that survives encoding: the caller's node and the
    call's correlation id (its message id)."""

    #: The caller's process: its message ids' incarnation (their bits above the counter).
    node: int
    #: Which of that process's pending calls: the call's message id.
    correlation: MessageId


def this_node() -> int:
    """This process's node: the incarnation its message ids carry (a forked child has its
    own). Draws one message id, which is never used again."""
    return new_message_id() >> COUNTER_BITS


class PendingCalls:
    """The calls of one system whose reply address left the process, by correlation id.

    An entry lives from :meth:`register` until the call is answered through the table or its
    caller gives up (timeout or cancellation), whichever comes first, so the table holds only
    calls someone still waits for. An answer for an unknown, already answered or abandoned
    call is dropped, as :meth:`ReplyHandle.reply` drops one for a caller that gave up.

    A registered call is answered through the table only: its slot now has a remote server,
    so no local handler serves it, and a slot answered around the table stays listed until its
    address is answered (which then drops).
    """

    __slots__ = ("_correlations", "_handles", "node")

    def __init__(self, node: int | None = None) -> None:
        #: The node that reply addresses made here name (by default this process's).
        self.node = this_node() if node is None else node
        self._handles: dict[MessageId, ReplyHandle] = {}
        #: The same entries by handle, for the handle's word that its caller gave up.
        self._correlations: dict[ReplyHandle, MessageId] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def __contains__(self, reply_to: object) -> bool:
        return (
            isinstance(reply_to, ReplyTo)
            and reply_to.node == self.node
            and reply_to.correlation in self._handles
        )

    def __repr__(self) -> str:
        return f"<PendingCalls {len(self._handles)} waiting>"

    def register(self, handle: ReplyHandle, envelope: Envelope) -> ReplyTo:
        """Keep ``handle`` (the live slot of the call ``envelope`` carries) for an answer that
        comes back as data; returns the call's reply address, also written on the envelope as
        ``envelope.reply_to`` for the codec. Registering a call again returns the same address.

        The entry leaves the table when the caller gives up: the table stands in as the
        handle's ``serving`` (the handle tells it when abandoned), so a handle that a local
        handler already serves is refused.

        Raises:
            ValueError: ``handle`` is served by a local handler, or no longer pending.
        """
        if not handle.pending:
            raise ValueError(f"only a pending call's reply can be registered: {handle!r}")
        reply_to = ReplyTo(self.node, envelope.id)
        registered = self._handles.get(envelope.id)
        if registered is not handle:
            if registered is not None or handle.serving is not None:
                raise ValueError(f"{handle!r} of call #{int(envelope.id)} is already served")
            self._handles[envelope.id] = handle
            self._correlations[handle] = envelope.id
            handle.serving = self
        envelope.reply_to = reply_to
        return reply_to

    def answer(self, reply_to: ReplyTo, value: Any) -> bool:
        """Answer the call ``reply_to`` names with ``value``.

        Returns:
            True if the answer reached its waiting caller; False if the call is unknown here,
            already answered, or its caller gave up (the answer is dropped).
        """
        handle = self._take(reply_to)
        return handle is not None and handle.pending and handle.reply(value)

    def fail(self, reply_to: ReplyTo, error: BaseException) -> bool:
        """Answer the call ``reply_to`` names with ``error``, which its caller sees raised.

        Returns as :meth:`answer`.
        """
        handle = self._take(reply_to)
        return handle is not None and handle.pending and handle.fail(error)

    def call_abandoned(self, handle: Any) -> None:
        """The caller of a registered call gave up: forget it (as the handle's ``serving``)."""
        correlation = self._correlations.pop(handle, None)
        if correlation is not None:
            del self._handles[correlation]

    def _take(self, reply_to: ReplyTo) -> ReplyHandle | None:
        if reply_to.__class__ is not ReplyTo or reply_to.node != self.node:
            return None
        handle = self._handles.pop(reply_to.correlation, None)
        if handle is not None:
            del self._correlations[handle]
            handle.serving = None
        return handle
