"""Identities: who an agent is, and which message this is."""

from __future__ import annotations

import itertools
import uuid

import attrs

__all__ = ["AgentId", "MessageId"]


@attrs.frozen(repr=False)
class AgentId:
    """The identity of an agent, stable across its restarts.

    ``AgentId()`` makes a fresh id; ``AgentId(name="planner")`` attaches a name for people and
    for lookups. Two ids are equal when their ``uid`` is, whatever their names.
    """

    uid: uuid.UUID = attrs.field(factory=uuid.uuid4)
    name: str | None = attrs.field(default=None, eq=False)

    def __repr__(self) -> str:
        short = self.uid.hex[:8]
        return f"AgentId({self.name!r}, {short})" if self.name else f"AgentId({short})"


_message_counter = itertools.count(1)


class MessageId(int):
    """The id of one message, unique within this process.

    An ``int`` so that making one costs next to nothing on the hot path and dedup tables can
    hash it quickly. ``MessageId.new()`` draws the next one.
    """

    __slots__ = ()

    @classmethod
    def new(cls) -> MessageId:
        """Return a fresh id, never returned before in this process."""
        return cls(next(_message_counter))

    def __repr__(self) -> str:
        return f"MessageId({int(self)})"
