"""Priorities: what waits in a mailbox is handed out highest priority first.

An agent is busy with a long job while messages of every priority pile up in its mailbox. When
it is free it takes the ``CRITICAL`` one first, then ``HIGH``, ``NORMAL`` and ``LOW``; within
one priority, arrival order is kept.
"""

import trio

from terraphim_actors import Agent, Priority, open_message_system


class Assistant(Agent):
    async def handle_cast(self, message, ctx) -> None:
        if message == "long job":
            await trio.sleep(1.0)
        print(f"handling {message!r} ({ctx.envelope.priority.name})")


async def main() -> None:
    async with open_message_system() as system:
        assistant = await system.spawn(Assistant, name="assistant")
        await assistant.cast("long job")
        await trio.sleep(0.1)  # it is busy now; the rest wait in its mailbox
        await assistant.cast("tidy the notes", priority=Priority.LOW)
        await assistant.cast("answer the user", priority=Priority.NORMAL)
        await assistant.cast("the user cancelled", priority=Priority.CRITICAL)
        await assistant.cast("answer the next user", priority=Priority.NORMAL)
        await assistant.cast("the rate limit was raised", priority=Priority.HIGH)
        await trio.sleep(2)


if __name__ == "__main__":
    trio.run(main)
