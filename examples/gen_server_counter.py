"""A gen_server in the OTP mould: call to read, cast to change, info for time and monitors.

The counter resets itself on a timer (``ctx.send_after``), watches an auditor with a monitor,
and stops on request. A call it cannot answer fails at once in the caller; a crash fails the
caller too, and the supervisor restarts the counter behind the same ref.
"""

import trio

from terraphim_actors import Agent, Down, open_message_system
from terraphim_actors.errors import CallFailed, UnhandledMessage


class Auditor(Agent):
    async def handle_cast(self, message, ctx) -> None:
        print(f"auditor saw {message}")


class Counter(Agent):
    def __init__(self, auditor):
        self.auditor = auditor

    async def on_start(self) -> None:
        self.count = 0

    async def handle_call(self, message, ctx):
        if message == "get":
            return self.count
        if message == "watch":
            ctx.monitor(self.auditor)
            ctx.send_after(0.05, "reset")
            return "watching"
        if isinstance(message, tuple) and message[0] == "divide":
            return self.count / message[1]  # dividing by zero crashes the counter
        return await super().handle_call(message, ctx)

    async def handle_cast(self, message, ctx) -> None:
        self.count += message
        await self.auditor.cast(f"+{message}")

    async def handle_info(self, message, ctx) -> None:
        if message == "reset":
            print(f"timer: reset at {self.count}")
            self.count = 0
        elif isinstance(message, Down):
            print(f"the auditor stopped ({message.reason.value})")
        else:
            await super().handle_info(message, ctx)


async def main() -> None:
    async with open_message_system() as system:
        auditor = await system.spawn(Auditor, name="auditor")
        counter = await system.spawn(Counter, auditor, name="counter")
        print(await counter.call("watch"))
        await counter.cast(5)
        await counter.cast(7)
        print(f"count = {await counter.call('get')}")
        await trio.sleep(0.1)  # the reset timer fires meanwhile
        print(f"count after the timer = {await counter.call('get')}")
        try:
            await counter.call("no such request")
        except UnhandledMessage:
            print("an unknown request fails at once; the counter keeps running")
        await system.stop(auditor)
        await trio.sleep(0.01)
        try:
            await counter.call(("divide", 0))
        except CallFailed as failure:
            print(f"the call failed: {failure.__cause__!r}")
        # Its supervisor restarted it: the same ref reaches a fresh instance.
        print(f"after the restart: alive {counter.alive}, count = {await counter.call('get')}")


if __name__ == "__main__":
    trio.run(main)
