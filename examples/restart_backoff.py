"""Restart backoff: wait longer before each restart of an agent that keeps crashing.

OTP restarts a crashed child at once. An agent whose upstream (a model endpoint, a database)
is down would then crash again at once, over and over, until its supervisor gives up. With
``RestartBackoff`` the supervisor waits ``initial * multiplier ** (n - 1)`` seconds before the
n-th restart in a row: here 0.1, 0.2, 0.4, 0.8 s, while the upstream comes back. A start that
fails (``on_start`` raises) counts as another crash in the row.
"""

import logging

import trio

from terraphim_actors import Agent, MessageSystemConfig, RestartBackoff, open_message_system
from terraphim_actors.errors import CallFailed


class Upstream:
    """A model endpoint, down until ``down_until`` (a Trio time)."""

    def __init__(self):
        self.down_until = 0.0

    def connect(self) -> None:
        if trio.current_time() < self.down_until:
            raise ConnectionRefusedError("the model endpoint is down")


class ModelClient(Agent):
    def __init__(self, upstream, starts):
        self.upstream = upstream
        self.starts = starts

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())
        self.upstream.connect()  # raises while the upstream is down

    async def handle_call(self, prompt, ctx):
        if prompt == "the connection drops":
            raise ConnectionResetError("the connection dropped")
        return f"an answer to {prompt!r}"


async def main() -> None:
    backoff = RestartBackoff(initial=0.1, multiplier=2.0, maximum=5.0, jitter=0)
    config = MessageSystemConfig(restart_backoff=backoff, max_restarts=10)
    async with open_message_system(config) as system:
        upstream, starts = Upstream(), []
        client = await system.spawn(ModelClient, upstream, starts, name="client")

        crashed_at = trio.current_time()
        upstream.down_until = crashed_at + 1.2  # down for 1.2 s from now
        try:
            await client.call("the connection drops")
        except CallFailed:
            print("the client crashed; its upstream is down for 1.2 s")
        await trio.sleep(3)
        previous = crashed_at
        for attempt, started in enumerate(starts[1:], start=1):
            outcome = "up" if started >= upstream.down_until else "down, crashes again"
            print(
                f"restart {attempt} at {started - crashed_at:.1f} s,"
                f" after waiting {started - previous:.1f} s: upstream {outcome}"
            )
            previous = started
        print(await client.call("are you back?"))


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crashes are planned
    logging.getLogger("supervisor").setLevel(logging.CRITICAL)
    trio.run(main)
