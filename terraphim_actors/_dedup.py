"""The dedup window of exactly-once delivery: which messages a recipient has handled lately."""

from __future__ import annotations

import collections
from typing import Any

import attrs

from ._checks import check_count, check_seconds, validator

__all__ = ["NO_REPLY", "UNSEEN", "DedupWindow", "HandledMessages"]

#: Stored for a message that has no reply to give again (a cast, or a deferred call).
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

    Ids are kept in completion order, so forgetting the oldest is a pop from the front.
    """

    __slots__ = ("_entries", "_window")

    def __init__(self, window: DedupWindow) -> None:
        self._window = window
        self._entries: collections.OrderedDict[int, tuple[float, Any]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def reply_for(self, message_id: int, now: float) -> Any:
        """The stored reply (or ``NO_REPLY``) if ``message_id`` was handled within the window,
        else ``UNSEEN``."""
        self._forget_older_than(now - self._window.max_age)
        entry = self._entries.get(message_id)
        return UNSEEN if entry is None else entry[1]

    def remember(self, message_id: int, now: float, reply: Any = NO_REPLY) -> None:
        """Record that ``message_id`` was handled at ``now`` (a call also keeps its reply)."""
        entries = self._entries
        entries[message_id] = (now, reply)
        entries.move_to_end(message_id)
        while len(entries) > self._window.max_messages:
            entries.popitem(last=False)
        self._forget_older_than(now - self._window.max_age)

    def _forget_older_than(self, horizon: float) -> None:
        entries = self._entries
        while entries:
            handled_at = next(iter(entries.values()))[0]
            if handled_at >= horizon:
                return
            entries.popitem(last=False)
