"""A supervision tree of agents: restarts by strategy, and an escalation that reaches the root.

The tree:

    root (one for one, at most 2 restarts in 60 s)
    ├── model            a permanent agent that crashes on a poisoned prompt
    └── research         one for all, at most 1 restart in 60 s
        ├── retriever    holds an index the ranker depends on
        └── ranker

A crash of the model restarts the model alone. A crash in the research subtree restarts both
of its agents; crashing it twice in a row is more than it allows, so it gives up, and the root
restarts the whole subtree. When the root in turn runs out of restarts, the system ends with
``RestartIntensityExceeded``: the failure is never silent.
"""

import logging

import trio

from terraphim_actors import (
    Agent,
    MessageSystemConfig,
    RestartIntensityExceeded,
    RestartStrategy,
    open_message_system,
)


class Model(Agent):
    async def handle_call(self, prompt, ctx):
        if prompt == "poison":
            raise ValueError("the model choked on its input")
        return f"an answer to {prompt!r}"


class Indexed(Agent):
    """The retriever and the ranker: each start rebuilds its state."""

    def __init__(self, label):
        self.label = label

    async def on_start(self) -> None:
        print(f"  {self.label} starts")

    async def on_stop(self, reason) -> None:
        why = reason.value if hasattr(reason, "value") else repr(reason)
        print(f"  {self.label} stops: {why}")

    async def handle_call(self, message, ctx):
        if message == "crash":
            raise RuntimeError(f"{self.label} lost its index")
        return f"{self.label} ok"


async def crash(ref) -> None:
    try:
        await ref.call("crash")
    except Exception as error:
        print(f"  the caller got {type(error).__name__}")
    await trio.sleep(0.01)


async def main() -> None:
    config = MessageSystemConfig(max_restarts=2, max_seconds=60.0)
    try:
        async with open_message_system(config) as system:
            model = await system.spawn(Model, name="model")
            research = await system.start_supervisor(
                [
                    system.agent_spec(Indexed, "retriever", name="retriever"),
                    system.agent_spec(Indexed, "ranker", name="ranker"),
                ],
                strategy=RestartStrategy.ONE_FOR_ALL,
                max_restarts=1,
                name="research",
            )
            print("1. the model crashes and is restarted alone")
            try:
                await model.call("poison")
            except Exception as error:
                print(f"  the caller got {type(error).__name__}: {error.__cause__}")
            print(f"  {await model.call('what is a supervisor?')}")

            print("2. the ranker crashes: one for all restarts both research agents")
            await crash(system.ref("ranker"))

            print("3. the retriever crashes twice: the subtree gives up, the root restarts it")
            await crash(system.ref("retriever"))
            await crash(system.ref("retriever"))
            print(f"  research restarts: {research.stats().total_restarts}")
            print(f"  root restarts: {system.root.stats().total_restarts}")
            print(f"  {await system.ref('ranker').call('status')} (the same ref as before)")

            print("4. crashing the subtree again is more than the root allows")
            await crash(system.ref("ranker"))
            await crash(system.ref("ranker"))
            await trio.sleep_forever()  # the root's escalation ends the block
    except RestartIntensityExceeded as error:
        print(f"the system ended: {error}")


if __name__ == "__main__":
    # Crash reports go to the ``logging`` module; this example prints its own account instead.
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)
    logging.getLogger("supervisor").setLevel(logging.CRITICAL)
    trio.run(main)
