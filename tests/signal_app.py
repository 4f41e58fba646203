"""A program for ``test_signals.py``: four agents busy in a long model call, until a signal.

    python signal_app.py {agents|pool} SHUTDOWN_TIMEOUT

``agents`` spawns four agents under the root, ``pool`` a pool of four; each takes one cast and
sleeps 60 s in its handler (a hung model call). The system is opened with
``handle_signals=True``. Output, one line each, flushed: the library's log records
(``LEVEL message``), ``ready`` once all four are busy, ``on_stop <reason>`` from each agent,
and ``left the block after <SIGNAL>`` if leaving the block raised nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

from terraphim_actors import Agent, Context, MessageSystemConfig, StopReason, open_message_system

WORKERS = 4


class Busy:
    """Counts the workers in their model call; ``all_busy`` is set once all are."""

    def __init__(self) -> None:
        self.count = 0
        self.all_busy = trio.Event()

    def one_more(self) -> None:
        self.count += 1
        if self.count == WORKERS:
            self.all_busy.set()


class Worker(Agent):
    def __init__(self, busy: Busy) -> None:
        self.busy = busy

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        self.busy.one_more()
        await trio.sleep(60)  # the model call that does not come back

    async def on_stop(self, reason: StopReason) -> None:
        print(f"on_stop {reason.value}", flush=True)


async def main(mode: str, shutdown_timeout: float) -> None:
    busy = Busy()
    config = MessageSystemConfig(shutdown_timeout=shutdown_timeout)
    async with open_message_system(config, handle_signals=True) as system:
        if mode == "pool":
            pool = await system.spawn_pool(Worker, busy, size=WORKERS, name="workers")
            for question in range(WORKERS):
                await pool.cast(question)  # round robin: one each
        else:
            for question in range(WORKERS):
                worker = await system.spawn(Worker, busy)
                await worker.cast(question)
        await busy.all_busy.wait()
        print("ready", flush=True)
        await trio.sleep_forever()
    signum = system.shutdown_signal
    print(f"left the block after {signum.name if signum else None}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    trio.run(main, sys.argv[1], float(sys.argv[2]))
