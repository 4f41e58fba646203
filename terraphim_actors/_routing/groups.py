"""Groups: several endpoints behind one address, with a balancer choosing among them.

A pool is a group whose members are instances of one agent. The group knows only endpoints
(and, through them, whether each occupant takes messages): who starts and supervises the
members is the business of the layers above, so a ref reaches a group exactly as it reaches
one endpoint, through its address.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope, MessageKind
from .._primitives.admission import Budgets
from .._primitives.balancing import Balancer, LoadBalancing
from .._primitives.dedup import HandledMessages
from ..errors import CallToSelf, InvalidConfig
from .endpoint import Endpoint

__all__ = ["Group"]


class _RoutedCount(Protocol):
    """Where a group counts the messages sent through it (the router's statistics)."""

    routed: int


class Group:
    """The member endpoints of a group (by position, stable across their restarts), their
    balancer, and the exactly-once window shared by every member for what comes through the
    group, so that a message retried through the group is not handled again by another."""

    def __init__(
        self,
        group_id: AgentId,
        size: int,
        balancer: Balancer,
        window: HandledMessages,
        clock: trio.abc.Clock,
        counts: _RoutedCount,
    ) -> None:
        self.id = group_id
        #: Each member's endpoint by position, once the member has first started.
        self.positions: list[Endpoint | None] = [None] * size
        self.balancer = balancer
        #: The exactly-once window of messages sent through the group.
        self.window = window
        self._clock = clock
        self._counts = counts
        #: False once the group has stopped for good.
        self.live = True
        #: The admission budgets every member shares (``spawn_pool(..., admission=...)``, or
        #: made by a member's ``ctx.retry_after``); ``None``: none.
        self.budgets: Budgets | None = None
        #: Where a message sent through the group goes when the members' circuits are open
        #: or their budgets spent beyond its deadline (an agent's or a pool's address).
        self.fallback: Endpoint | Group | None = None

    def __repr__(self) -> str:
        return f"<Group {self.id!r}: {len(self.positions)} members>"

    @property
    def strategy(self) -> LoadBalancing:
        """How the group chooses a member."""
        return self.balancer.strategy

    def join(self, position: int, endpoint: Endpoint) -> None:
        """``endpoint`` is the member at ``position`` from now on."""
        self.positions[position] = endpoint
        endpoint.group = self
        if self.budgets is not None:
            endpoint.install_budgets(self.budgets)

    def addressed_by(self, recipient: AgentId | str | None) -> bool:
        """Whether a message for ``recipient`` came through the group (its id, or its name
        while it lives: a group's name is freed only once it has stopped), not to a member
        by the member's own address."""
        return recipient is not None and (recipient == self.id or recipient == self.id.name)

    def member(self, position: int) -> Endpoint | None:
        """The member at ``position`` unless it is leaving: stopped, or stopping, for good
        (its mailbox is closed, it takes nothing more)."""
        endpoint = self.positions[position]
        return None if endpoint is None or endpoint.occupant.leaving else endpoint

    @property
    def emptied(self) -> bool:
        """Whether every member has started and is leaving for good: nothing will take a
        message sent through the group again (a member stopped for good is not started again,
        even by a restart of the group)."""
        return all(e is not None and e.occupant.leaving for e in self.positions)

    def members(self) -> list[Endpoint]:
        """The members that are not leaving, in group order."""
        return [e for e in map(self.member, range(len(self.positions))) if e is not None]

    # -- as an address: what a ref resolves its destination through -------------------------

    def route(self, envelope: Envelope | None) -> Endpoint | None:
        """The member for a message sent through the group's ref (counted as routed)."""
        self._counts.routed += 1
        return self.choose(envelope)

    def only(self) -> Endpoint:
        """A group is not one destination.

        Raises:
            InvalidConfig: always.
        """
        raise InvalidConfig(f"{self.id!r} is a pool, not one agent: use its members")

    def choose(self, envelope: Envelope | None) -> Endpoint | None:
        """The member for ``envelope``; ``None`` when no member can take it.

        A member is skipped while its circuit refuses, while it waits to restart (if another
        member runs), and for a call from a member's own task, when it is the caller (it would
        call itself). An exactly-once message goes to the member its id picks, whatever the
        strategy, so that a resend of it queues behind the first and is recognised as a
        duplicate.

        Raises:
            CallToSelf: a member called the group from its own task, and every other member
                has stopped for good: only the caller could answer, and it would wait for
                itself.
        """
        now = self._clock.current_time()
        members = [self.member(position) for position in range(len(self.positions))]
        caller = None
        if envelope is not None and envelope.kind is MessageKind.CALL:
            # Only a member's own task is a caller that cannot answer: a background task's
            # agent has its handler free.
            caller = next((e for e in members if e is not None and e.occupant.in_own_task), None)

        # The members whose admission lets a message through now, the caller left out.
        admitting = [
            None
            if e is None
            or e is caller
            or (e.admission is not None and not e.admission.would_admit(now))
            else e
            for e in members
        ]
        # A member waiting to restart is passed over only while another runs and admits the
        # message; the caller does not count: a restarting member answers it once back.
        running_only = any(e is not None and e.occupant.serving for e in admitting)

        def available(position: int) -> bool:
            endpoint = admitting[position]
            return endpoint is not None and (endpoint.occupant.serving or not running_only)

        def load(position: int) -> int:
            endpoint = members[position]
            return 0 if endpoint is None else endpoint.occupant.load

        if envelope is not None and envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE:
            position = None
            size = len(self.positions)
            for step in range(size):
                candidate = (int(envelope.id) + step) % size
                endpoint = self.positions[candidate]
                if endpoint is not None and endpoint.occupant.leaving:
                    if not endpoint.occupant.gone:
                        # Its first copy may be in hand there, and the group's window learns
                        # of it only once handled: a resend waits until the member is gone.
                        return None
                elif available(candidate):
                    position = candidate
                    break
        else:
            payload = None if envelope is None else envelope.payload
            position = self.balancer.choose(payload, available, load)
        if position is not None:
            return members[position]
        # Every other member's admission refuses: name the one whose retry_at comes first, so
        # the sender sees the open circuit (and a retry waits for it) rather than nobody.
        refusing = [
            e
            for e in members
            if e is not None
            and e is not caller
            and e.admission is not None
            and not e.admission.would_admit(now)
        ]
        if not refusing and caller is not None:
            raise CallToSelf(
                f"{caller.id!r} called its own pool {self.id!r}, whose only member left is"
                " itself: it would wait forever"
            )
        return min(refusing, key=lambda e: _retry_at(e, now), default=None)


def _retry_at(endpoint: Endpoint, now: float) -> float:
    """When ``endpoint``'s admission, which refuses at ``now``, may let a message through."""
    assert endpoint.admission is not None
    retry_at = endpoint.admission.retry_at(now)
    return now if retry_at is None else retry_at
