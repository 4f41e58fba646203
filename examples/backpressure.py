"""A bounded mailbox: backpressure that paces a fast producer, or load shedding.

An embedding agent handles one document per 0.1 s. With a mailbox of 3 and the ``BLOCK``
policy, a producer that casts 8 documents as fast as it can is held back: each cast returns
only once there is room, so the producer runs at the consumer's pace and memory stays bounded.
With the ``REJECT`` policy a full mailbox refuses at once: an at-most-once sender gets
``MailboxFull`` and can shed the load (under at-least-once the cast would be retried later).
"""

import trio

from terraphim_actors import (
    Agent,
    DeliveryGuarantee,
    MailboxConfig,
    MessageOptions,
    OverflowPolicy,
    open_message_system,
)
from terraphim_actors.errors import MailboxFull


class Embedder(Agent):
    async def handle_cast(self, document, ctx) -> None:
        await trio.sleep(0.1)  # the embedding model at work


async def main() -> None:
    async with open_message_system() as system:
        paced = await system.spawn(Embedder, name="paced", mailbox=MailboxConfig(capacity=3))
        print("BLOCK: the producer waits for room (one document in hand, three waiting)")
        started = trio.current_time()
        for number in range(1, 9):
            await paced.cast(f"document {number}")
            print(f"  cast {number} accepted at {trio.current_time() - started:.1f} s")
        _, mailboxes = system.get_stats()
        [stats] = [mailbox for mailbox in mailboxes if mailbox.agent_id == paced.id]
        print(f"  peak queue {stats.peak_queue_size}, rejected {stats.messages_rejected}")

        shedding = MailboxConfig(capacity=3, overflow=OverflowPolicy.REJECT)
        shed = await system.spawn(Embedder, name="shed", mailbox=shedding)
        at_most_once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
        print("REJECT: a full mailbox refuses at once")
        for number in range(1, 7):
            try:
                await shed.cast(f"document {number}", options=at_most_once)
            except MailboxFull:
                print(f"  document {number} refused: the mailbox is full")
            else:
                print(f"  document {number} accepted")
        dead = [letter.reason.value for letter in system.dead_letters]
        print(f"  refused documents are dead letters: {dead}")


if __name__ == "__main__":
    trio.run(main)
