"""Monitors and timers: hear when an agent stops for good, and act later.

A coordinator watches two workers with ``ctx.monitor``. A monitor's ``Down`` comes once the
agent has stopped for good, with the reason; a crash that its supervisor repairs sends none
(the ref outlives restarts). ``ctx.demonitor`` takes a monitor back, and a monitor set on an
agent already gone fires at once (reason ``noproc``). The coordinator also keeps a heartbeat
with ``ctx.send_after`` (an info to itself, re-armed at each beat) and cancels a timeout it
no longer needs.
"""

import logging

import trio

from terraphim_actors import Agent, Down, open_message_system
from terraphim_actors.errors import CallFailed


class Worker(Agent):
    async def handle_call(self, message, ctx):
        if message == "crash":
            raise RuntimeError("the worker crashed")
        return "ok"


class Coordinator(Agent):
    def __init__(self, started):
        self.started = started

    def say(self, text) -> None:
        print(f"{trio.current_time() - self.started:4.1f} s  {text}")

    async def on_start(self) -> None:
        self.monitors = {}
        self.beats = 0

    async def handle_call(self, message, ctx):
        command, ref = message
        if command == "monitor":
            self.monitors[ref.name] = ctx.monitor(ref)
        elif command == "demonitor":
            ctx.demonitor(self.monitors.pop(ref.name))
        elif command == "start timers":
            ctx.send_after(0.5, "beat")
            self.timeout = ctx.send_after(2.0, "the job took too long")
        elif command == "job done":
            self.timeout.cancel()
            self.say("job done: the timeout is cancelled")
        return None

    async def handle_info(self, message, ctx) -> None:
        if isinstance(message, Down):
            reason = getattr(message.reason, "value", message.reason)
            self.say(f"Down: {message.ref.name} ({reason})")
        elif message == "beat":
            self.beats += 1
            self.say(f"heartbeat {self.beats}")
            if self.beats < 3:
                ctx.send_after(0.5, "beat")
        else:
            self.say(f"timer fired: {message}")


async def main() -> None:
    async with open_message_system() as system:
        coordinator = await system.spawn(Coordinator, trio.current_time(), name="coordinator")
        alpha = await system.spawn(Worker, name="alpha")
        beta = await system.spawn(Worker, name="beta")
        await coordinator.call(("monitor", alpha))
        await coordinator.call(("monitor", beta))
        await coordinator.call(("start timers", None))

        try:
            await alpha.call("crash")
        except CallFailed:
            print(
                f"alpha crashed and was restarted (no Down); it answers {await alpha.call('hi')!r}"
            )
        await trio.sleep(1.2)
        await system.stop(alpha)  # for good: Down (normal)
        await coordinator.call(("demonitor", beta))
        await system.stop(beta)  # no monitor any more: no Down
        await coordinator.call(("monitor", beta))  # already gone: Down (noproc) at once
        await trio.sleep(0.5)
        await coordinator.call(("job done", None))
        await trio.sleep(1)  # past the timeout, which was cancelled: it never fires


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crash is planned
    trio.run(main)
