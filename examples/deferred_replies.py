"""Deferred replies: answer a call later, and keep serving other messages meanwhile.

A batching model server takes prompts by ``call`` but runs them three at a time, as a batched
LLM API does. Each call is deferred (``ctx.defer()``) until its batch is full; the batch runs in
a background task (``ctx.start_soon``), so the agent still answers a ``"status"`` call at once.
A caller that stops waiting gets ``CallTimeout``, and the answer that comes later reaches nobody
(``reply()`` returns ``False``): a late reply never reaches another call.
"""

import trio

from terraphim_actors import Agent, open_message_system
from terraphim_actors.errors import CallTimeout


class BatchingModel(Agent):
    async def on_start(self) -> None:
        self.waiting = []  # (prompt, deferred reply) until the batch is full

    async def handle_call(self, prompt, ctx):
        if prompt == "status":
            return f"{len(self.waiting)} prompts waiting for a batch"
        self.waiting.append((prompt, ctx.defer()))
        if len(self.waiting) == 3:
            batch, self.waiting = self.waiting, []
            ctx.start_soon(self.run_batch, batch)
        return None  # ignored: the reply was deferred

    async def run_batch(self, batch) -> None:
        await trio.sleep(0.5)  # one model run for the whole batch
        for prompt, reply in batch:
            if not await reply.reply(f"{prompt.upper()}!"):
                print(f"the answer to {prompt!r} reached nobody: its caller had given up")


async def ask(model, prompt, timeout=5.0) -> None:
    started = trio.current_time()
    try:
        answer = await model.call(prompt, timeout=timeout)
    except CallTimeout:
        print(f"{prompt!r}: gave up after {trio.current_time() - started:.1f} s")
    else:
        print(f"{prompt!r} -> {answer!r} after {trio.current_time() - started:.1f} s")


async def main() -> None:
    async with open_message_system() as system:
        model = await system.spawn(BatchingModel, name="model")
        async with trio.open_nursery() as callers:
            callers.start_soon(ask, model, "hello")
            callers.start_soon(ask, model, "bonjour")
            await trio.sleep(0.1)
            print(await model.call("status"))  # answered at once, while two calls wait
            callers.start_soon(ask, model, "hola")  # the third fills the batch

        print("a caller in a hurry:")
        async with trio.open_nursery() as callers:
            callers.start_soon(ask, model, "ciao", 0.2)
            await trio.sleep(0.3)
            callers.start_soon(ask, model, "hallo")
            callers.start_soon(ask, model, "hej")
        await trio.sleep(1)


if __name__ == "__main__":
    trio.run(main)
