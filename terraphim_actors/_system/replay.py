"""What a journal kept from an earlier run, handed to each named agent as it is spawned.

A durable journal, once open, knows the messages a crash or a shutdown left unsettled and the
exactly-once messages completed recently. Both belong to a recipient name, not to a process:
the agent of that name in this run takes them over when it is spawned, before anything can
be sent to it, so that what was sent before the restart comes before what is sent after.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from .._core.ids import MessageId
from .._core.messages import Envelope
from .._core.protocols import Journal
from .._delivery.durability import recipient_name
from .._primitives.dedup import DedupWindow, HandledMessages
from .._routing.endpoint import Endpoint

__all__ = ["Replays", "endpoint_window", "replay_into"]


class Replays:
    """The unsettled and completed messages of a journal, by recipient name, each name's
    handed out once (a name spawned again later in this run has nothing left to take)."""

    __slots__ = ("_completed", "_unsettled")

    def __init__(self, journal: Journal) -> None:
        """Read what ``journal`` (running) kept: its unsettled messages in commit order."""
        self._unsettled: dict[str, list[Envelope]] = collections.defaultdict(list)
        for envelope in journal.unsettled():
            name = recipient_name(envelope)
            if name is not None:
                # Addressed to the name, not to the id it had in an earlier run (an agent's
                # or a pool's, which nothing answers to now): routed by it, the message and
                # each of its retries reach whichever agent or pool holds the name now.
                self._unsettled[name].append(envelope.evolve(recipient=name))
        self._completed: dict[str, list[tuple[MessageId, float]]] = collections.defaultdict(list)
        for name, message_id, age in journal.completed():
            self._completed[name].append((message_id, age))

    def __len__(self) -> int:
        """How many unsettled messages wait for their agent."""
        return sum(len(envelopes) for envelopes in self._unsettled.values())

    def take_unsettled(self, name: str) -> list[Envelope]:
        """The unsettled messages for ``name``, in commit order, each addressed to ``name``;
        none the next time."""
        return self._unsettled.pop(name, [])

    def completed(self, name: str) -> bool:
        """Whether ``name`` completed exactly-once messages still inside the window."""
        return bool(self._completed.get(name))

    def seed(self, name: str, window: HandledMessages, now: float) -> None:
        """Remember in ``window`` the exactly-once messages ``name`` completed before the
        restart, as completed as long ago as they were, so that a duplicate of one is
        suppressed; none the next time."""
        completed = self._completed.pop(name, [])
        for message_id, age in sorted(completed, key=lambda entry: -entry[1]):  # oldest first
            window.remember(message_id, now - age)


def replay_into(
    replays: Replays,
    name: str,
    window: Callable[[], HandledMessages],
    now: float,
    deliver: Callable[[Envelope], None],
) -> None:
    """Give the agent or the pool just registered as ``name`` what the journal kept for it:
    the exactly-once messages it completed, into the window ``window()`` gives (asked for
    only when there are some), then its unsettled messages, in commit order, to ``deliver``."""
    if replays.completed(name):
        replays.seed(name, window(), now)
    for envelope in replays.take_unsettled(name):
        deliver(envelope)


def endpoint_window(endpoint: Endpoint, dedup: DedupWindow) -> HandledMessages:
    """The exactly-once window of the agent at ``endpoint``, made now if it has none yet."""
    if endpoint.window is None:
        endpoint.window = HandledMessages(dedup)
    return endpoint.window
