"""Selective receive: take the message you need first, and leave the others in their order.

An agent takes its messages in order, as a gen_server does. A mailbox you drive yourself (an
Erlang process's ``receive``) can pick: here a coordinator, a plain Trio task, registers a
mailbox, hands three jobs to workers that finish in any order, and takes the urgent job's result
first with ``receive_matching``. The other results stay queued in arrival order for ``drain``;
a predicate nothing matches gives up after its timeout with ``MessageTimeout``.
"""

import trio

from terraphim_actors import Agent, AgentId, cast, open_message_system
from terraphim_actors.errors import MessageTimeout


class Worker(Agent):
    """Does a job, then sends the result to the coordinator's mailbox by name."""

    async def handle_cast(self, job, ctx) -> None:
        await trio.sleep(job["seconds"])
        result = {"job": job["name"], "by": ctx.self.name}
        await ctx.system.send_message(cast(ctx.self.id, result, recipient="coordinator"))


async def main() -> None:
    async with open_message_system() as system:
        inbox = system.register_agent(AgentId(name="coordinator"))
        jobs = [("summary", 0.1), ("translation", 0.2), ("urgent fix", 0.3)]
        for number, (name, seconds) in enumerate(jobs):
            worker = await system.spawn(Worker, name=f"worker-{number}")
            await worker.cast({"name": name, "seconds": seconds})

        urgent = await inbox.receive_matching(
            lambda envelope: envelope.payload["job"] == "urgent fix"
        )
        print(f"first: {urgent.payload['job']} (by {urgent.payload['by']})")
        print(f"still queued, in arrival order: {[e.payload['job'] for e in inbox.drain()]}")

        try:
            await inbox.receive_matching(lambda envelope: envelope.payload["job"] == "poem", 1.0)
        except MessageTimeout:
            print("no poem within 1 s: nobody was asked for one")


if __name__ == "__main__":
    trio.run(main)
