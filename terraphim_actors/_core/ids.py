"""Identities: who an agent is, and which message this is."""

from __future__ import annotations

import functools
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import NewType

import attrs

from ..errors import InvalidConfig
from .bounded_repr import bounded_repr

__all__ = ["AgentId", "MessageId", "new_message_id"]


class AgentId:
    """The identity of an agent, stable across its restarts.

    ``AgentId()`` makes a fresh id; ``AgentId(name="planner")`` attaches a name for people and
    for lookups. Two ids are equal when their ``uid`` is, whatever their names. Immutable.

    It keeps its uid as the ``int`` of the UUID and makes the ``uuid.UUID`` only when asked:
    every agent, asleep or awake, holds one id, and a ``UUID`` object is 56 bytes more of each
    of a million hibernated agents (and a fresh one costs a spawn a microsecond).
    """

    __slots__ = ("_uid", "name")

    _uid: int
    name: str | None

    def __init__(self, uid: uuid.UUID | None = None, name: str | None = None) -> None:
        if uid is not None and uid.__class__ is not uuid.UUID:
            raise InvalidConfig(f"an AgentId's uid must be a uuid.UUID, got {bounded_repr(uid)}")
        if name is not None and not isinstance(name, str):
            # Refused here as spawn refuses it: a name is looked up in the directory, where
            # an unhashable one would fail far from the mistake.
            raise InvalidConfig(
                f"an AgentId's name must be a str or None, got {bounded_repr(name)}"
            )
        initialise = object.__setattr__
        initialise(self, "_uid", _random_uid() if uid is None else uid.int)
        initialise(self, "name", name)

    @property
    def uid(self) -> uuid.UUID:
        """The id's UUID (version 4 when the id was made here)."""
        return uuid.UUID(int=self._uid)

    def __setattr__(self, name: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not AgentId:
            return NotImplemented
        return self._uid == other._uid

    def __hash__(self) -> int:
        return hash(self._uid)

    def __reduce__(self) -> tuple[type[AgentId], tuple[uuid.UUID, str | None]]:
        return AgentId, (self.uid, self.name)

    def __repr__(self) -> str:
        short = f"{self._uid:032x}"[:8]
        return f"AgentId({self.name!r}, {short})" if self.name else f"AgentId({short})"


def _random_uid() -> int:
    """The int of a fresh version-4 UUID, random as ``uuid.uuid4``'s (``os.urandom``), without
    the ``UUID`` object around it.

    Drawn from a batch: one ``os.urandom`` call for ``_UIDS_PER_DRAW`` ids, as the system call
    cost a spawn as much as the rest of its id. ``next`` on the batch's list iterator hands each
    out once, whatever the threads; a forked child drops the batch it inherited."""
    global _fresh_uids
    uid = next(_fresh_uids, None)
    if uid is None:
        _fresh_uids = _draw_uids()
        uid = next(_fresh_uids)
    return uid


def _draw_uids() -> Iterator[int]:
    """A batch of fresh version-4 UUID ints, from one ``os.urandom`` call."""
    data = os.urandom(16 * _UIDS_PER_DRAW)
    return iter(
        [
            (int.from_bytes(data[start : start + 16], "big") & _CLEAR_VERSION_AND_VARIANT)
            | _VERSION_4
            for start in range(0, len(data), 16)
        ]
    )


#: The version and variant bits of a UUID's int, cleared and then set as version 4, RFC 4122.
_CLEAR_VERSION_AND_VARIANT = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
#: Ids drawn per ``os.urandom`` call (4 KB of randomness).
_UIDS_PER_DRAW = 256
#: The ids of the current batch not yet handed out.
_fresh_uids: Iterator[int] = iter(())


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
    global _fresh_uids
    _fresh_uids = iter(())  # the parent hands out the rest of its batch of agent ids


os.register_at_fork(after_in_child=_new_incarnation_after_fork)
