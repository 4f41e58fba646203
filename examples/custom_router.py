"""A custom router: send each task to the agents that have the skill it needs.

A ``MessageRouter`` (any object with ``route(envelope, system)`` returning refs) replaces the
built-in routing of ``system.send_message``, as the original crate's custom router does. This
one reads the skill a task needs and picks the pool that has it (which then balances over its
members); a sensitive task also goes, as a copy, to an auditor. A task that no agent can take
yet is routed nowhere: under at-least-once it waits for a retry, which asks the router again,
so it reaches the translator started in the meantime.
"""

import trio

from terraphim_actors import (
    Agent,
    DeliveryConfig,
    MessageSystemConfig,
    RouterConfig,
    cast,
    open_message_system,
)


class SkillRouter:
    def route(self, envelope, system):
        task = envelope.payload
        targets = []
        skilled = system.whereis(task["skill"])  # a pool's ref, or an agent's, or None
        if skilled is not None:
            targets.append(skilled)
        if task.get("sensitive"):
            targets.append(system.ref("auditor"))
        return targets


class Worker(Agent):
    async def handle_cast(self, task, ctx) -> None:
        print(f"  {ctx.self.name} takes {task['text']!r}")


async def main() -> None:
    config = MessageSystemConfig(
        router=RouterConfig(custom_router=SkillRouter()),
        delivery=DeliveryConfig(retry_delay=0.5, jitter=0),
    )
    async with open_message_system(config) as system:
        await system.spawn_pool(Worker, size=2, name="coder")
        await system.spawn_pool(Worker, size=2, name="writer")
        await system.spawn(Worker, name="auditor")
        tasks = [
            {"skill": "coder", "text": "fix the parser"},
            {"skill": "writer", "text": "draft the release notes"},
            {"skill": "coder", "text": "rotate the API keys", "sensitive": True},
            {"skill": "translator", "text": "translate the notes"},
        ]
        for task in tasks:
            print(f"send {task['text']!r}")
            await system.send_message(cast(None, task))
            await trio.sleep(0.01)  # let the agents print in order

        [waiting] = system.delivery.get_retry_candidates()
        print(f"{waiting.envelope.payload['text']!r} waits for retry {waiting.attempt}")
        await system.spawn(Worker, name="translator")
        await trio.sleep(1)


if __name__ == "__main__":
    trio.run(main)
