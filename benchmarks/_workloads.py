"""Workloads that several benchmarks run: casts spread from senders over recipients, and call
round trips, each through agents and on bare memory channels (the floor).

Both sides of a comparison do the same work per message (a payload of one int, one count in a
shared :class:`Tally`), so that the ratio between them is the cost of the framework alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from _harness import settle

from terraphim_actors import Agent, AgentRef, Context, MessageSystemConfig, open_message_system

__all__ = [
    "Counter",
    "Tally",
    "agent_awaited_casts",
    "agent_casts",
    "agent_round_trips",
    "floor_awaited_casts",
    "floor_casts",
    "floor_round_trips",
    "send_all",
    "timed_casts",
]

#: Calls made before the timed ones, so that first-use costs are not in the latencies.
WARM_UP_CALLS = 200


class Tally:
    """Counts the messages handled by every consumer of one measurement and wakes the waiter
    when the last one is in: the end of a run, without a call that would add a round trip."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = trio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Counter(Agent):
    """Counts each cast in the run's tally; answers a call with its payload."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.tally.add()

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return message


async def send_all(
    targets: Sequence[Callable[[int], None]], messages: int, senders: int, burst: int
) -> None:
    """Send ``messages`` numbers round robin over ``targets`` (non-blocking sends).

    One sender sends them all at once from the calling task. Several senders are tasks that
    share the numbers and yield after every ``burst`` sends, so that they take turns as
    independent producers would, and the recipient sees its senders interleaved.
    """
    if senders == 1:
        _send_share(targets, range(messages))
        return
    async with trio.open_nursery() as nursery:
        for sender in range(senders):
            nursery.start_soon(_send_in_bursts, targets, range(sender, messages, senders), burst)


def _send_share(targets: Sequence[Callable[[int], None]], numbers: range) -> None:
    count = len(targets)
    if count == 1:
        [send] = targets
        for number in numbers:
            send(number)
        return
    for number in numbers:
        targets[number % count](number)


async def _send_in_bursts(
    targets: Sequence[Callable[[int], None]], numbers: range, burst: int
) -> None:
    for start in range(0, len(numbers), burst):
        _send_share(targets, numbers[start : start + burst])
        await trio.lowlevel.checkpoint()


async def floor_casts(messages: int, senders: int, recipients: int, burst: int) -> float:
    """Seconds until ``recipients`` consumer tasks, each receiving from its own memory channel,
    have received ``messages`` numbers sent with ``send_nowait`` by ``senders``."""
    tally = Tally(messages)
    channels = [trio.open_memory_channel[int](math.inf) for _ in range(recipients)]
    async with trio.open_nursery() as nursery:
        for _, receive in channels:
            nursery.start_soon(_consume, receive, tally)
        await settle()
        targets = [send.send_nowait for send, _ in channels]
        elapsed = await timed_casts(targets, tally, senders, burst)
        for send, _ in channels:
            send.close()
    return elapsed


async def _consume(receive: trio.MemoryReceiveChannel[int], tally: Tally) -> None:
    async for _ in receive:
        tally.add()


async def agent_casts(
    messages: int,
    senders: int,
    recipients: int,
    burst: int,
    config: MessageSystemConfig | None = None,
) -> float:
    """Seconds until ``recipients`` agents have handled ``messages`` casts (``cast_nowait``)
    sent by ``senders``; the system's start and shutdown are not timed."""
    tally = Tally(messages)
    async with open_message_system(config) as system:
        refs = [await system.spawn(Counter, tally) for _ in range(recipients)]
        await settle()
        elapsed = await timed_casts([ref.cast_nowait for ref in refs], tally, senders, burst)
    return elapsed


async def floor_awaited_casts(messages: int) -> float:
    """Seconds until a consumer task has received ``messages`` numbers, each sent with
    ``await send.send(...)`` into its memory channel: one scheduler round per send."""
    tally = Tally(messages)
    send, receive = trio.open_memory_channel[int](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_consume, receive, tally)
        await settle()
        started = time.perf_counter()
        for number in range(messages):
            await send.send(number)
        await tally.done.wait()
        elapsed = time.perf_counter() - started
        send.close()
    return elapsed


async def agent_awaited_casts(messages: int, config: MessageSystemConfig | None = None) -> float:
    """Seconds until an agent has handled ``messages`` casts, each sent with
    ``await ref.cast(...)``, as the README teaches."""
    tally = Tally(messages)
    async with open_message_system(config) as system:
        ref = await system.spawn(Counter, tally)
        await settle()
        started = time.perf_counter()
        for number in range(messages):
            await ref.cast(number)
        await tally.done.wait()
        elapsed = time.perf_counter() - started
    return elapsed


async def timed_casts(
    targets: Sequence[Callable[[int], None]], tally: Tally, senders: int, burst: int
) -> float:
    """Seconds to send ``tally.target`` casts over ``targets`` and see them all handled."""
    started = time.perf_counter()
    await send_all(targets, tally.target, senders, burst)
    await tally.done.wait()
    return time.perf_counter() - started


async def floor_round_trips(calls: int) -> list[float]:
    """Seconds of each of ``calls`` round trips between two tasks: a request channel and a
    reply channel, the server answering each request with ``send_nowait``."""
    request_send, request_receive = trio.open_memory_channel[int](math.inf)
    reply_send, reply_receive = trio.open_memory_channel[int](math.inf)

    async def serve() -> None:
        async for number in request_receive:
            reply_send.send_nowait(number)

    async def round_trip(number: int) -> None:
        request_send.send_nowait(number)
        await reply_receive.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        latencies = await _timed_calls(round_trip, calls)
        request_send.close()
    return latencies


async def agent_round_trips(calls: int, config: MessageSystemConfig | None = None) -> list[float]:
    """Seconds of each of ``calls`` calls to an agent that answers with the payload."""
    async with open_message_system(config) as system:
        ref: AgentRef = await system.spawn(Counter, Tally(0))

        async def round_trip(number: int) -> None:
            await ref.call(number)

        latencies = await _timed_calls(round_trip, calls)
    return latencies


async def _timed_calls(round_trip: Callable[[int], Awaitable[None]], calls: int) -> list[float]:
    for number in range(WARM_UP_CALLS):
        await round_trip(number)
    latencies = []
    clock = time.perf_counter
    for number in range(calls):
        started = clock()
        await round_trip(number)
        latencies.append(clock() - started)
    return latencies
