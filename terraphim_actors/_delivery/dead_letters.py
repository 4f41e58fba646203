"""Dead letters: every message that could not be delivered, kept with why."""

from __future__ import annotations

import collections
import enum
import logging

import attrs

from .._core.bounded_repr import REPR_LIMIT, shorten
from .._core.messages import Envelope, now

__all__ = ["DeadLetter", "DeadLetterOffice", "DeadLetterReason"]

logger = logging.getLogger("terraphim_actors.dead_letters")

#: Characters of a dead letter's detail kept at most: room for one bounded repr and what it
#: says around it, never the size of a payload or of a user's error message.
DETAIL_LIMIT = 2 * REPR_LIMIT


class DeadLetterReason(enum.Enum):
    """Why a message was not delivered (or not handled)."""

    #: No agent by that id or name.
    NOT_FOUND = "not found"
    #: The recipient's bounded mailbox was full.
    MAILBOX_FULL = "mailbox full"
    #: The message outlived its timeout, or its caller gave up before it was handled.
    EXPIRED = "expired"
    #: The recipient has no handler for that kind of message.
    UNHANDLED = "unhandled"
    #: The recipient's handler raised while handling it.
    HANDLER_CRASHED = "handler crashed"
    #: Its handler raised an error that will fail the same way again (``NonRetryable``, or
    #: listed in the agent's ``no_retry_on``): never redelivered.
    REJECTED = "rejected"
    #: The recipient stopped before handling it.
    AGENT_STOPPED = "agent stopped"
    #: The message system shut down before it was handled.
    SYSTEM_STOPPED = "system stopped"
    #: The recipient's circuit breaker was open (and the message was not to be retried).
    CIRCUIT_OPEN = "circuit open"
    #: Every retry its guarantee allows failed; the detail names the last failure.
    RETRIES_EXHAUSTED = "retries exhausted"
    #: The cluster could not take it for an agent on another node: no NATS server answered.
    UNREACHABLE = "unreachable"
    #: It arrived from another node in bytes this node cannot read (its payload's type is not
    #: registered here, or the bytes are not a message).
    UNDECODABLE = "undecodable"


@attrs.frozen
class DeadLetter:
    """One undelivered message, with the reason and the Trio time it died.

    Its ``detail`` is at most ``DETAIL_LIMIT`` characters (see ``DeadLetterOffice.record``).
    """

    envelope: Envelope
    reason: DeadLetterReason
    detail: str = ""
    at: float = attrs.field(factory=now)


class DeadLetterOffice:
    """Keeps the most recent dead letters (bounded) and counts all of them by reason."""

    def __init__(self, capacity: int) -> None:
        self._recent: collections.deque[DeadLetter] = collections.deque(maxlen=capacity)
        self._by_reason: collections.Counter[DeadLetterReason] = collections.Counter()

    @property
    def total(self) -> int:
        """Every dead letter ever recorded, including those no longer kept."""
        return self._by_reason.total()

    def by_reason(self) -> dict[DeadLetterReason, int]:
        """Counts of every dead letter ever recorded, per reason."""
        return dict(self._by_reason)

    def recent(self) -> tuple[DeadLetter, ...]:
        """The kept dead letters, oldest first."""
        return tuple(self._recent)

    def record(
        self,
        envelope: Envelope,
        reason: DeadLetterReason,
        detail: str = "",
        *,
        described: object = None,
    ) -> DeadLetter:
        """File ``envelope`` as undelivered for ``reason``, and return the record (its
        ``detail`` cut to ``DETAIL_LIMIT``: it is kept, and logged, for every dead letter).

        The log shows the envelope as ``described`` (its recipient's ``Agent.format_message``
        applied), or its repr when not given.
        """
        letter = DeadLetter(envelope, reason, shorten(detail, DETAIL_LIMIT))
        self._recent.append(letter)
        self._by_reason[reason] += 1
        logger.debug(
            "dead letter (%s) %s %s",
            reason.value,
            envelope if described is None else described,
            letter.detail,
        )
        return letter
