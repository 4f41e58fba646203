"""The three delivery guarantees, on one flaky agent that crashes the first time it sees a
message.

- At most once: the message is handled at most once. The crash loses it, and it becomes a
  dead letter ("handler crashed"); nothing is retried.
- At least once (the default): the message is acknowledged only when its handler returns.
  After the crash the restarted agent gets it again, so its handler runs twice: side effects
  that are not idempotent happen twice (the card is charged twice).
- Exactly once: at least once, plus dedup by message id at the recipient. A client that sends
  the same message again (same id) does not get it handled again once a handler completed it.
  What it cannot undo: a handler that crashed half way did half its work (here, the charge).
"""

import logging

import trio

from terraphim_actors import (
    Agent,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    cast,
    open_message_system,
)


class Billing(Agent):
    """Charges a card; its first try at each order crashes after the charge went through."""

    def __init__(self, charges):
        self.charges = charges  # outlives restarts, as the payment provider's records do

    async def handle_cast(self, order, ctx) -> None:
        self.charge(order)

    def charge(self, order) -> None:
        self.charges.append(order)
        if self.charges.count(order) == 1:
            raise ConnectionError("the connection dropped after the charge")


async def main() -> None:
    config = MessageSystemConfig(delivery=DeliveryConfig(retry_delay=0.1, jitter=0))
    async with open_message_system(config) as system:
        charges = []
        billing = await system.spawn(Billing, charges, name="billing")

        print("at most once:")
        at_most_once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
        await billing.cast("order 1", options=at_most_once)
        await trio.sleep(1)
        print(f"  charged {charges.count('order 1')} time(s)")
        [letter] = system.dead_letters
        print(f"  dead letter: {letter.envelope.payload} ({letter.reason.value})")

        print("at least once:")
        await billing.cast("order 2")
        await trio.sleep(1)
        print(f"  charged {charges.count('order 2')} time(s): the handler ran again")

        print("exactly once:")
        exactly_once = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        order = cast(None, "order 3", exactly_once, recipient="billing")
        await system.send_message(order)
        await system.send_message(order)  # a client's retry: the same message id
        await trio.sleep(1)
        print(
            f"  sent twice, charged {charges.count('order 3')} time(s): the try that crashed,"
            " then one completed run; the resend is suppressed as a duplicate"
        )

        stats = system.delivery.get_stats()
        print(
            f"delivery: {stats.sent} sent, {stats.acknowledged} acknowledged,"
            f" {stats.retried} retried, {stats.duplicates_suppressed} duplicates suppressed,"
            f" {stats.dead_lettered} dead-lettered, {stats.pending} pending"
        )


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crashes are planned
    trio.run(main)
