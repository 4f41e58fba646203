"""How a message accepted for delivery ended: the record a journal keeps of its settlement."""

from __future__ import annotations

import enum

__all__ = ["Settlement"]


class Settlement(enum.Enum):
    """The one way an accepted message ended (``DeliveryStats`` counts each).

    Every message the delivery layer accepts is settled exactly once, in one of these ways;
    until then it is pending (in a mailbox, in a handler, or waiting for a retry).
    """

    #: Its handler returned normally (a call answered through ``ctx.caller`` included).
    ACKNOWLEDGED = "acknowledged"
    #: An exactly-once message its recipient had completed: not handled again.
    DUPLICATE = "duplicate"
    #: A call that ended in an error for its waiting caller.
    FAILED = "failed"
    #: Given up on and filed as a dead letter with its reason.
    DEAD_LETTERED = "dead_lettered"
    #: Handed to the cluster for an agent on another node, which settles it there.
    FORWARDED = "forwarded"
    #: Refused before it was ever the delivery layer's (an agent waiting for room in its own
    #: full mailbox): not counted as sent.
    REFUSED = "refused"
