"""Faults on the way to an agent: a router that loses or doubles envelopes, and a link in
front of ``send_message`` that also delays and reorders them."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from .. import AgentRef, DeadLetterReason, Envelope, MessageRouter, MessageSystem
from ..errors import InvalidMessage, MessagingError

if TYPE_CHECKING:
    from ._faults import FaultInjector

__all__ = ["DROPPED_IN_TRANSIT", "FaultyLink", "FaultyRouter"]

#: The detail of the dead letter a link files for an envelope it drops.
DROPPED_IN_TRANSIT = "dropped in transit by a FaultInjector link"


class FaultyRouter:
    """A :class:`~terraphim_actors.MessageRouter` that loses or doubles envelopes; made by
    :meth:`FaultInjector.router`, which says what each fault means to the delivery layer."""

    def __init__(
        self,
        injector: FaultInjector,
        inner: MessageRouter | None,
        *,
        drop: float,
        duplicate: float,
    ) -> None:
        self._injector = injector
        self._inner = inner
        self.drop = drop
        self.duplicate = duplicate

    def __repr__(self) -> str:
        return f"<FaultyRouter drop={self.drop} duplicate={self.duplicate} over {self._inner!r}>"

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        """The refs ``inner`` chooses (or the recipient's), none if dropped, each twice if
        doubled."""
        if self._inner is not None:
            refs = list(self._inner.route(envelope, system))
        else:
            recipient = envelope.recipient
            ref = None if recipient is None else system.whereis(recipient)
            refs = [] if ref is None else [ref]
        injector = self._injector
        counters = injector._counters
        counters.routed += 1
        if injector.decide(self.drop):
            counters.drops += 1
            return []
        if refs and injector.decide(self.duplicate):
            counters.duplicates += 1
            return refs + refs
        return refs


class FaultyLink:
    """What :meth:`FaultInjector.link` yields: ``send`` stands for ``system.send_message``."""

    def __init__(
        self,
        injector: FaultInjector,
        system: MessageSystem,
        nursery: trio.Nursery,
        *,
        drop: float,
        duplicate: float,
        delay: float,
        delay_probability: float,
        reorder: float,
    ) -> None:
        self._injector = injector
        self._system = system
        self._nursery = nursery
        self.drop = drop
        self.duplicate = duplicate
        self.delay = delay
        self.delay_probability = delay_probability
        self.reorder = reorder
        self._held: Envelope | None = None

    def __repr__(self) -> str:
        return (
            f"<FaultyLink drop={self.drop} duplicate={self.duplicate} delay={self.delay}"
            f" reorder={self.reorder}>"
        )

    async def send(self, envelope: Envelope) -> None:
        """Send ``envelope`` through the link's faults to ``system.send_message``.

        Raises:
            InvalidMessage: ``envelope`` is not an ``Envelope``.
            MessagingError: what ``send_message`` raises for an envelope sent at once.
        """
        if not isinstance(envelope, Envelope):
            raise InvalidMessage(f"expected an Envelope, got {type(envelope).__name__}")
        injector = self._injector
        counters = injector._counters
        counters.routed += 1
        if injector.decide(self.drop):
            counters.drops += 1
            self._system.file_dead_letter(envelope, DeadLetterReason.NOT_FOUND, DROPPED_IN_TRANSIT)
            await trio.lowlevel.checkpoint()
            return
        copies = 1
        if injector.decide(self.duplicate):
            counters.duplicates += 1
            copies = 2
        if self.delay and injector.decide(self.delay_probability):
            counters.delays += 1
            for _ in range(copies):
                self._nursery.start_soon(self._send_later, envelope)
            await trio.lowlevel.checkpoint()
            return
        if self._held is None and injector.decide(self.reorder):
            counters.reorders += 1
            self._held = envelope
            for _ in range(copies - 1):
                await self._system.send_message(envelope)
            return
        for _ in range(copies):
            await self._system.send_message(envelope)
        await self.flush()

    async def flush(self) -> None:
        """Send the envelope held back for reordering, if any, now."""
        held, self._held = self._held, None
        if held is None:
            await trio.lowlevel.checkpoint()
            return
        await self._system.send_message(held)

    def abandon(self) -> None:
        """The link closes on an error: what it holds becomes a dead letter, and the delayed
        sends are cancelled (each filing its own)."""
        held, self._held = self._held, None
        if held is not None:
            self._system.file_dead_letter(
                held, DeadLetterReason.EXPIRED, "the link closed before it was sent"
            )
        self._nursery.cancel_scope.cancel()

    async def _send_later(self, envelope: Envelope) -> None:
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self._system.file_dead_letter(
                envelope, DeadLetterReason.EXPIRED, "the link closed before its delay passed"
            )
            raise
        # What send_message raises, the delivery layer has filed as a dead letter already;
        # nobody waits in this task to hear it.
        with contextlib.suppress(MessagingError):
            await self._system.send_message(envelope)
