"""The dedup window of exactly-once delivery: which messages a recipient has handled lately."""

from __future__ import annotations

import collections
import math
from typing import Any

import attrs

from .._core.checks import check_count, check_seconds, validator

__all__ = ["NO_REPLY", "UNSEEN", "DedupWindow", "HandledMessages"]

#: Stored for a message that has no reply to give again (a cast or an info; a deferred call
#: keeps a ``KeptAnswer`` instead, which learns its answer when it is given).
NO_REPLY: Any = object()
#: What :meth:`HandledMessages.reply_for` returns for a message not in the window (a reply
#: may be ``None``, so ``None`` cannot say it).
UNSEEN: Any = object()


@attrs.frozen(kw_only=True)
class DedupWindow:
    """How long a recipient remembers the messages it handled, under exactly-once delivery.

    A message id is forgotten once ``max_messages`` newer ones were remembered, or ``max_age``
    seconds after its handler completed, whichever comes first: a duplicate arriving later than
    that is handled again. The window bounds the memory that dedup costs per recipient.
    """

    max_messages: int = attrs.field(default=10_000, validator=validator(check_count, minimum=1))
    max_age: float = attrs.field(default=300.0, validator=validator(check_seconds))


class HandledMessages:
    """One recipient's window: message ids whose handler completed, with the reply a call gave.

    Ids are kept in completion order, so forgetting the oldest is a pop from the front. A
    lookup checks an entry's own age, so the window is exact; dropping aged entries is only
    to bound memory, and is done now and then rather than on every message.
    """

    __slots__ = ("_entries", "_sweep_at", "_window")

    def __init__(self, window: DedupWindow) -> None:
        self._window = window
        self._entries: collections.OrderedDict[int, tuple[float, Any]] = collections.OrderedDict()
        self._sweep_at = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def reply_for(self, message_id: int, now: float) -> Any:
        """The stored reply (or ``NO_REPLY``) if ``message_id`` was handled within the window,
        else ``UNSEEN``."""
        entry = self._entries.get(message_id)
        if entry is None or entry[0] < now - self._window.max_age:
            return UNSEEN
        return entry[1]

    def remember(self, message_id: int, now: float, reply: Any = NO_REPLY) -> None:
        """Record that ``message_id`` was handled at ``now`` (a call also keeps its reply)."""
        entries = self._entries
        if message_id in entries:
            entries.move_to_end(message_id)
        entries[message_id] = (now, reply)
        if len(entries) > self._window.max_messages:
            entries.popitem(last=False)
        if now >= self._sweep_at:
            self._forget_older_than(now - self._window.max_age)
            self._sweep_at = now + self._window.max_age / 16

    def _forget_older_than(self, horizon: float) -> None:
        entries = self._entries
        while entries and next(iter(entries.values()))[0] < horizon:
            entries.popitem(last=False)
