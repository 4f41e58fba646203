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


MessageId = NewType("MessageId", int)
MessageId.__doc__ = """The id of one message: a plain ``int``, unique within this process and
increasing, made by :func:`new_message_id`.

Exactly-once delivery recognises a duplicate by it, so a message sent again keeps its id. It is
an ``int`` rather than a class of its own because one is made on every send, where a subclass
of ``int`` cost about a tenth of a cast (and dedup tables hash a plain ``int`` at C speed)."""

new_message_id: Callable[[], MessageId] = functools.partial(next, itertools.count(1))
new_message_id.__doc__ = """Return a fresh :data:`MessageId`, never returned before in this process.

A counter rather than a random id, so that ids are cheap to make and increase with time; they
are unique within one process only, which is all the in-process delivery layer needs."""
