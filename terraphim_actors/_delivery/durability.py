"""Which messages a durable journal keeps: the one rule shared by delivery and the journal.

A journal replays what a crash left unsettled, so it keeps only messages that can be delivered
again after a restart and are worth it: casts and infos (a call's caller dies with the process,
so its reply would reach nobody), under a guarantee that promises a delivery (at least once or
exactly once: at most once promises nothing across a crash), addressed by name (an agent id
without a name is fresh in every process and will never be spawned again).
"""

from __future__ import annotations

from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope, MessageKind

__all__ = ["journaled", "recipient_name"]

_KEPT_KINDS = frozenset({MessageKind.CAST, MessageKind.INFO})
_KEPT_GUARANTEES = frozenset({DeliveryGuarantee.AT_LEAST_ONCE, DeliveryGuarantee.EXACTLY_ONCE})


def recipient_name(envelope: Envelope) -> str | None:
    """The name ``envelope`` is addressed to (a name, or an agent id's name), or ``None``."""
    recipient = envelope.recipient
    if isinstance(recipient, str):
        return recipient
    if isinstance(recipient, AgentId):
        return recipient.name
    return None


def journaled(envelope: Envelope) -> bool:
    """Whether a durable journal keeps ``envelope`` (its options already filled in by delivery):
    a cast or an info, at least once or exactly once, addressed by name."""
    return (
        envelope.kind in _KEPT_KINDS
        and envelope.options.guarantee in _KEPT_GUARANTEES
        and recipient_name(envelope) is not None
    )
