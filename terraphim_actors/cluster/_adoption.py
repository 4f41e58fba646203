"""What JetStream holds for a node that left: handed on, so that nothing waits for it forever.

At-least-once and exactly-once messages for a node wait in the cluster's stream until that node
acknowledges them. When a node leaves (its heartbeats stop) and does not come back, one live
node adopts its queue: the first of the live nodes by name, so that each node's view of who is
alive decides the same heir. The heir takes each message from the departed node's durable
consumer and

- sends it on to the node that holds its recipient's name now (the agent was spawned again
  elsewhere), then acknowledges it;
- or, when no live node holds the name, hands it back to JetStream to be offered again later,
  until its expiry, when it becomes a dead letter on the heir (``EXPIRED``).

The departed node, back under its name, takes what is left of its queue itself: the heir stops
adopting as soon as it sees it alive again. A message sent on keeps its message id (the
receiving node's exactly-once window recognises it) but is published under an id of its own
(``<id>~<departed node>``), since JetStream would drop a second publish of the original id
within its duplicate window.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from .._core.ids import AgentId
from .._core.messages import Envelope, cast
from .._delivery.dead_letters import DeadLetterReason
from ..errors import InvalidMessage
from ._remote import Link
from ._wire import AGE, MESSAGE_ID, decode_message, time_in_stream

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ._bridge import Subscription
    from ._directory import Placement

__all__ = ["adopt", "heir_of"]

logger = logging.getLogger("terraphim_actors.cluster")

#: Seconds between two looks at whether the departed node is back.
LOOK_AGAIN = 0.5

#: Seconds JetStream waits before offering again a message no live node can take yet.
OFFER_AGAIN = 1.0


class Heir(Link, Protocol):
    """What an heir works with: what a remote inbox sends through, and a way to take what
    JetStream holds for a node."""

    async def pull_queue(self, node: str) -> Subscription: ...


def heir_of(departed: str, live_nodes: frozenset[str]) -> str | None:
    """The node that adopts ``departed``'s queue: the first live one by name."""
    candidates = sorted(live_nodes - {departed})
    return candidates[0] if candidates else None


async def adopt(heir: Heir, departed: str) -> None:
    """Hand on what the stream holds for ``departed`` until it is seen alive again."""
    queue = await heir.pull_queue(departed)
    logger.info("adopting the queue of node %r, which left", departed)
    try:
        while not heir.directory.node_alive(departed):
            with trio.move_on_after(LOOK_AGAIN):
                for message in await queue.receive_batch():
                    await _hand_on(heir, departed, message)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(LOOK_AGAIN):
            await queue.unsubscribe()


async def _hand_on(heir: Heir, departed: str, message: Msg) -> None:
    """Send ``message`` on to the node holding its recipient's name, or offer it again later,
    or, past its expiry, file it as a dead letter here."""
    bridge, now = heir.bridge, heir.now()
    try:
        envelope = decode_message(message.data, message.headers, now, time_in_stream(message))
    except InvalidMessage as error:
        heir.delivery.refuse_arrival(
            cast(None, message.data, recipient=f"?{departed}"),
            DeadLetterReason.UNDECODABLE,
            f"in the queue of node {departed!r}: {error}",
        )
        bridge.term_nowait(message)
        return
    placement = _placement(heir, envelope)
    if placement is not None and placement.node != departed:
        headers = dict(message.headers or {})
        headers[MESSAGE_ID] = f"{headers.get(MESSAGE_ID, int(envelope.id))}~{departed}"
        headers[AGE] = repr(max(0.0, now - envelope.created_at))  # its wait here included
        subject = heir.subjects.queue(placement.node)

        async def send_on() -> None:
            await bridge.jetstream.publish(subject, message.data, headers=headers)

        try:
            await bridge.run(send_on)
        except Exception as error:  # not taken: JetStream offers it again
            logger.warning("could not hand on %r: %r", envelope, error)
            bridge.nak_nowait(message, OFFER_AGAIN)
            return
        bridge.ack_nowait(message)
        return
    if envelope.created_at + envelope.options.timeout < now:
        heir.delivery.refuse_arrival(
            envelope,
            DeadLetterReason.EXPIRED,
            f"its node {departed!r} left, and no node took its recipient before its timeout",
        )
        bridge.ack_nowait(message)
        return
    bridge.nak_nowait(message, OFFER_AGAIN)


def _placement(heir: Heir, envelope: Envelope) -> Placement | None:
    recipient = envelope.recipient
    name = recipient.name if isinstance(recipient, AgentId) else recipient
    return None if name is None else heir.directory.lookup(name)
