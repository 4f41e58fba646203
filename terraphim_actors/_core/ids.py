"""Identities: who an agent is, and which message this is."""

from __future__ import annotations

import functools
import itertools
import os
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
MessageId.__doc__ = """The id of one message: a plain ``int``, unique across processes and
across restarts of one process, increasing within one process, made by :func:`new_message_id`.

Exactly-once delivery recognises a duplicate by it, so a message sent again keeps its id; a
journal or another node's dedup window recognises it too, which is why it is qualified by the
process that made it. Its high bits are that process's incarnation (64 random bits drawn when
it starts, and again in a forked child), its low 64 bits a counter, so two processes (or two
runs of one) share an id only with odds of 2**-64 per pair. It is an ``int`` rather than a class
of its own because one is made on every send, where a subclass of ``int`` cost about a tenth of
a cast (and dedup tables hash a plain ``int`` at C speed)."""

#: Bits of a message id below its incarnation: a counter that never reaches them.
COUNTER_BITS = 64


def _first_id_of_a_new_incarnation() -> int:
    """The first id of this process's incarnation: fresh random high bits, a counter at 1."""
    return int.from_bytes(os.urandom(8), "big") << COUNTER_BITS | 1


_ids = functools.partial(next, itertools.count(_first_id_of_a_new_incarnation()))
_ids.__doc__ = """Return a fresh :data:`MessageId`, never returned before by this or any other
process (but for odds of 2**-64).

A counter under a random per-process prefix rather than a random id, so that ids are cheap to
make (``next`` on an ``itertools.count``, at C speed) and increase within a process."""
new_message_id: Callable[[], MessageId] = _ids


def _new_incarnation_after_fork() -> None:
    """A forked child starts a new incarnation: otherwise it would repeat its parent's ids.

    The counter is swapped inside the one ``new_message_id`` object, so every module that
    imported it draws from the new one."""
    counter = itertools.count(_first_id_of_a_new_incarnation())
    _ids.__setstate__((next, (counter,), {}, _ids.__dict__))  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_new_incarnation_after_fork)
