"""Identities: who an agent is, and which message this is."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Callable
from typing import NewType

import attrs

__all__ = ["AgentId", "MessageId", "new_message_id"]


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


#: The id of one message: an ``int``, unique within this process and increasing. A plain
#: ``int`` (not a subclass) because making one is on the path of every send, where an int
#: subclass cost about a tenth of a cast; dedup tables hash it at C speed too.
MessageId = NewType("MessageId", int)

#: Return a fresh :data:`MessageId`, never returned before in this process.
new_message_id: Callable[[], MessageId] = functools.partial(next, itertools.count(1))
