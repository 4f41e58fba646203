"""Quick start: spawn an agent, cast to it, call it, and read the statistics."""

import trio

from terraphim_actors import Agent, open_message_system


class Counter(Agent):
    async def on_start(self) -> None:
        self.n = 0

    async def handle_cast(self, message, ctx) -> None:
        self.n += message

    async def handle_call(self, message, ctx):
        return self.n


async def main() -> None:
    async with open_message_system() as system:
        counter = await system.spawn(Counter, name="counter")
        for amount in (1, 2, 3):
            await counter.cast(amount)
        total = await counter.call("get", timeout=1.0)
        print(f"counter holds {total}")
        stats, _ = system.get_stats()
        print(f"{stats.messages_processed} messages processed by {stats.agents_running} agent")


if __name__ == "__main__":
    trio.run(main)
