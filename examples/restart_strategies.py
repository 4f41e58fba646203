"""The three restart strategies of a supervisor, on the same three agents.

A retrieval pipeline: an index, a retriever that reads the index, and a ranker that reads the
retriever's results. The retriever crashes; which agents restart depends on the strategy of
the supervisor above them, as in OTP:

- ``ONE_FOR_ONE``: the retriever alone (the others do not depend on it);
- ``ONE_FOR_ALL``: all three, stopped newest first, then started in order (they share state);
- ``REST_FOR_ONE``: the retriever and those started after it, the ranker (each depends on
  the ones before it).

Escalation, a supervisor giving up and its parent taking over, is in ``supervision_tree.py``.
"""

import contextlib
import logging

import trio

from terraphim_actors import Agent, RestartStrategy, open_message_system
from terraphim_actors.errors import CallFailed


class Stage(Agent):
    def __init__(self, log, label):
        self.log = log
        self.label = label

    async def on_start(self) -> None:
        self.log.append(f"{self.label} starts")

    async def on_stop(self, reason) -> None:
        crashed = isinstance(reason, Exception)
        self.log.append(f"{self.label} {'crashes' if crashed else 'is stopped'}")

    async def handle_call(self, message, ctx):
        raise RuntimeError(f"{self.label} crashed")


async def main() -> None:
    async with open_message_system() as system:
        for strategy in RestartStrategy:
            log = []
            prefix = strategy.name.lower()
            await system.start_supervisor(
                [
                    system.agent_spec(Stage, log, label, name=f"{prefix}-{label}")
                    for label in ("index", "retriever", "ranker")
                ],
                strategy=strategy,
                name=prefix,
            )
            log.clear()
            with contextlib.suppress(CallFailed):  # the caller sees the crash at once
                await system.ref(f"{prefix}-retriever").call("search")
            await trio.sleep(0.1)
            print(f"{strategy.name}: {', '.join(log)}")


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crash is planned
    trio.run(main)
