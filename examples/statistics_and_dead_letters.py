"""Statistics and dead letters: every message that is not delivered is kept, with why.

A dead-letter office agent subscribes to dead letters (``system.subscribe_dead_letters``) and
logs each as it happens. The program then loses messages in the usual ways: a message nobody
handles, one that waited past its timeout, a handler that crashed (at most once, so no retry),
a full mailbox, an unknown name, an agent that has stopped, and a handler that crashes at every
retry. At the end it prints the counters: the system's, each mailbox's, and the delivery
layer's, whose books balance.
"""

import contextlib
import logging

import trio

from terraphim_actors import (
    Agent,
    DeadLetter,
    DeliveryConfig,
    DeliveryGuarantee,
    MailboxConfig,
    MessageOptions,
    MessageSystemConfig,
    OverflowPolicy,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentNotFound, MailboxFull


class DeadLetterOffice(Agent):
    async def handle_info(self, letter, ctx) -> None:
        if isinstance(letter, DeadLetter):
            print(f"  dead letter: {letter.envelope.payload!r} ({letter.reason.value})")


class Summarizer(Agent):
    async def handle_cast(self, document, ctx) -> None:
        if document == "slow report":
            await trio.sleep(1.0)
        elif document.startswith("corrupt"):
            raise ValueError(f"cannot parse {document}")


async def main() -> None:
    config = MessageSystemConfig(delivery=DeliveryConfig(max_retries=2, retry_delay=0.1))
    at_most_once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
    async with open_message_system(config) as system:
        office = await system.spawn(DeadLetterOffice, name="dead-letter-office")
        system.subscribe_dead_letters(office)
        summarizer = await system.spawn(Summarizer, name="summarizer")

        print("losing messages:")
        await summarizer.info("an info it has no handler for")
        await summarizer.cast("slow report")
        await summarizer.cast("stale request", options=MessageOptions(timeout=0.5))
        await summarizer.cast("corrupt.pdf", options=at_most_once)
        await trio.sleep(1.5)

        small = MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT)
        busy = await system.spawn(Summarizer, name="busy", mailbox=small)
        await busy.cast("slow report")
        await trio.sleep(0.01)  # busy takes it in hand
        await busy.cast("waiting report")  # in the mailbox, which is now full
        with contextlib.suppress(MailboxFull):  # at most once, the sender hears of it
            await busy.cast("one report too many", options=at_most_once)
        with contextlib.suppress(AgentNotFound):
            await system.send_message(cast(None, "for nobody", at_most_once, recipient="nobody"))
        await system.stop(busy)  # for good: what waits in its mailbox becomes a dead letter
        await busy.cast("after the stop")
        await summarizer.cast("corrupt at every try")  # at least once: 1 try + 2 retries
        await trio.sleep(1.5)

        stats, mailboxes = system.get_stats()
        print("system:")
        print(f"  agents running {stats.agents_running}, crashes {stats.agent_crashes}")
        print(f"  messages received {stats.messages_received}, dead letters {stats.dead_letters}")
        for reason, count in sorted(stats.dead_letters_by_reason.items(), key=str):
            print(f"    {reason.value}: {count}")
        print("mailboxes:")
        for mailbox in mailboxes:
            print(
                f"  {mailbox.agent_id.name}: {mailbox.messages_received} received,"
                f" {mailbox.messages_processed} processed, peak queue {mailbox.peak_queue_size}"
            )
        delivery = system.delivery.get_stats()
        print(
            f"delivery: {delivery.sent} sent = {delivery.acknowledged} acknowledged"
            f" + {delivery.failed} failed + {delivery.duplicates_suppressed} duplicates"
            f" + {delivery.dead_lettered} dead-lettered + {delivery.pending} pending"
        )


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crashes are planned
    trio.run(main)
