"""Threads: a message system belongs to the thread of its Trio run.

Each method that sends, waits or changes state, called from another thread (a worker thread,
or a ``trio.run`` of its own in one), raises ``WrongThread`` before it changes anything, so the
books stay balanced and the system still shuts down; ``trio.from_thread`` keeps working, and so
do plain reads. ``system.from_thread`` is the way in from any other thread.

A regression shows as a hang or a Trio internal error on the way out. The body of each test
runs under ``trio.fail_after``, but the system's shutdown is shielded (a lost wake-up wedges it
beyond any cancel scope), so each test also runs in a Trio run of a thread of its own that the
test stops waiting for (see :func:`bounded`). They use the real clock, because a mock clock
that jumps while a worker thread runs would fire those deadlines early; nothing sleeps.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from agents import Recorder, Runner, call_and_keep, defer_into
from guarded import run_in_own_thread

from terraphim_actors import (
    AgentId,
    AgentRef,
    Context,
    DeferredReply,
    Mailbox,
    MessageSystem,
    PoolRef,
    cast,
    open_message_system,
)
from terraphim_actors.errors import CallFailed, CallTimeout, SystemClosed, WrongThread

#: Seconds any test's body may take: far more than it needs, so that only a hang reaches it.
BOUND = 10

#: Seconds a test's whole run, shutdown included, may take.
HANG = 2 * BOUND


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a Trio run of a thread of its own, and fail it if that run has
    not ended within ``HANG`` seconds; the system under test is that thread's."""

    @functools.wraps(test)
    def run_bounded(*args: Any, **kwargs: Any) -> None:
        body = functools.partial(test, *args, **kwargs)
        run_in_own_thread(functools.partial(trio.run, body), wall_seconds=HANG)

    return run_bounded


@attrs.define
class World:
    """A running system and what the operations under test act on."""

    system: MessageSystem
    #: A ``Recorder`` and what it handled.
    ref: AgentRef
    log: list[tuple[str, Any]]
    pool: PoolRef
    #: A mailbox driven by hand (``register_agent``) holding one message.
    mailbox: Mailbox


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    """A system with an agent, a pool and a hand-driven mailbox, left within ``BOUND``."""
    with trio.fail_after(BOUND):
        async with open_message_system() as system:
            log: list[tuple[str, Any]] = []
            ref = await system.spawn(Recorder, log, name="recorder")
            pool = await system.spawn_pool(Recorder, [], size=2, name="pool")
            mailbox = system.register_agent(AgentId(name="by-hand"))
            await system.send_message(cast(None, "waiting", recipient="by-hand"))
            await trio.testing.wait_all_tasks_blocked()
            yield World(system, ref, log, pool, mailbox)


def books(system: MessageSystem) -> tuple[object, ...]:
    """What a send or a change of state would move: the delivery and routing counters, the
    agents, and every mailbox's counts."""
    _, mailboxes = system.get_stats()
    return (
        system.delivery.get_stats(),
        system.router.stats(),
        system.agents,
        [(m.agent_id, m.messages_received, m.messages_processed) for m in mailboxes],
    )


def in_own_trio_run(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run an async method as a thread that misuses it would: in a ``trio.run`` of its own."""
    trio.run(functools.partial(method, *args, **kwargs))


def raises_wrong_thread(operation: Callable[[], object]) -> WrongThread:
    """Run ``operation`` (in the calling thread) and return the ``WrongThread`` it raised."""
    with pytest.raises(WrongThread) as raised:
        operation()
    return raised.value


#: Every send through a ref, as run from a foreign thread.
REF_SENDS: dict[str, Callable[[World], object]] = {
    "cast": lambda w: in_own_trio_run(w.ref.cast, "x"),
    "cast_nowait": lambda w: w.ref.cast_nowait("x"),
    "info": lambda w: in_own_trio_run(w.ref.info, "x"),
    "info_nowait": lambda w: w.ref.info_nowait("x"),
    "call": lambda w: in_own_trio_run(w.ref.call, "x"),
    "pool cast": lambda w: in_own_trio_run(w.pool.cast, "x"),
    "pool cast_nowait": lambda w: w.pool.cast_nowait("x"),
    "pool info": lambda w: in_own_trio_run(w.pool.info, "x"),
    "pool info_nowait": lambda w: w.pool.info_nowait("x"),
    "pool call": lambda w: in_own_trio_run(w.pool.call, "x"),
    "pool broadcast": lambda w: in_own_trio_run(w.pool.broadcast, "x"),
}

#: Every method of the system that sends, waits or changes state, as run from a foreign thread.
SYSTEM_CHANGES: dict[str, Callable[[World], object]] = {
    "spawn": lambda w: in_own_trio_run(w.system.spawn, Recorder, [], name="new"),
    "spawn_pool": lambda w: in_own_trio_run(w.system.spawn_pool, Recorder, [], size=1, name="new"),
    "start_supervisor": lambda w: in_own_trio_run(w.system.start_supervisor, []),
    "agent_spec": lambda w: w.system.agent_spec(Recorder, [], name="new"),
    "stop": lambda w: in_own_trio_run(w.system.stop, w.ref),
    "stop a pool": lambda w: in_own_trio_run(w.system.stop, w.pool),
    "send_message": lambda w: in_own_trio_run(
        w.system.send_message, cast(None, "x", recipient="recorder")
    ),
    "send_message to a hand-driven mailbox": lambda w: in_own_trio_run(
        w.system.send_message, cast(None, "x", recipient="by-hand")
    ),
    "register_agent": lambda w: w.system.register_agent(AgentId(name="new")),
    "subscribe": lambda w: w.system.subscribe(w.ref),
    "subscribe_dead_letters": lambda w: w.system.subscribe_dead_letters(w.ref),
}

#: Every use of a hand-driven mailbox that sends, takes, waits or closes, from a foreign thread.
MAILBOX_CHANGES: dict[str, Callable[[World], object]] = {
    "send": lambda w: in_own_trio_run(w.mailbox.send, cast(None, "x")),
    "send_nowait": lambda w: w.mailbox.send_nowait(cast(None, "x")),
    "try_receive": lambda w: w.mailbox.try_receive(),
    "drain": lambda w: w.mailbox.drain(),
    "receive": lambda w: in_own_trio_run(w.mailbox.receive),
    "receive_timeout": lambda w: in_own_trio_run(w.mailbox.receive_timeout, 1),
    "receive_matching": lambda w: in_own_trio_run(w.mailbox.receive_matching, bool),
    "close": lambda w: w.mailbox.close(),
}

EVERY_CHANGE = {
    **REF_SENDS,
    **SYSTEM_CHANGES,
    **{f"mailbox {name}": change for name, change in MAILBOX_CHANGES.items()},
}


async def from_worker_thread(function: Callable[[], object]) -> Any:
    """Run ``function`` in a worker thread, as blocking code beside the system would."""
    return await trio.to_thread.run_sync(function)


class TestForeignThreads:
    @pytest.mark.parametrize("name", EVERY_CHANGE)
    @bounded
    async def test_a_change_from_a_worker_thread_raises_wrong_thread(self, name: str) -> None:
        """A send, wait or change of state from a worker thread raises ``WrongThread``."""
        change = EVERY_CHANGE[name]
        async with world() as w:
            await from_worker_thread(lambda: raises_wrong_thread(lambda: change(w)))

    @pytest.mark.parametrize("name", EVERY_CHANGE)
    @bounded
    async def test_a_change_refused_for_its_thread_leaves_the_books_unchanged(
        self, name: str
    ) -> None:
        """Refused, it counted, queued and registered nothing: ``pending`` has not moved."""
        change = EVERY_CHANGE[name]
        async with world() as w:
            before = books(w.system)
            await from_worker_thread(lambda: raises_wrong_thread(lambda: change(w)))
            assert books(w.system) == before

    @pytest.mark.parametrize("name", EVERY_CHANGE)
    @bounded
    async def test_the_system_shuts_down_after_a_change_refused_for_its_thread(
        self, name: str
    ) -> None:
        """Leaving the system afterwards completes (within ``BOUND``) with nothing pending."""
        change = EVERY_CHANGE[name]
        async with world() as w:
            await from_worker_thread(lambda: raises_wrong_thread(lambda: change(w)))
        assert w.system.delivery.get_stats().pending == 0

    @pytest.mark.parametrize("name", ["cast", "cast_nowait", "call"])
    @bounded
    async def test_the_error_says_to_use_trio_from_thread(self, name: str) -> None:
        """The message names the ways that work from a worker thread."""
        async with world() as w:
            error = await from_worker_thread(
                lambda: raises_wrong_thread(lambda: REF_SENDS[name](w))
            )
        assert "trio.from_thread.run" in str(error)
        assert "system.from_thread.call(ref, ...)" in str(error)

    @bounded
    async def test_a_send_stepped_outside_any_trio_run_raises_wrong_thread(self) -> None:
        """A coroutine of a send driven by hand in a worker thread (as another event loop
        would drive it) is refused at its first step too."""

        def step(coroutine: Coroutine[Any, Any, object]) -> None:
            try:
                coroutine.send(None)
            finally:
                coroutine.close()

        async with world() as w:
            before = books(w.system)
            await from_worker_thread(lambda: raises_wrong_thread(lambda: step(w.ref.cast("x"))))
            assert books(w.system) == before


class TestFromThreadRuns:
    @bounded
    async def test_a_cast_through_trio_from_thread_run_is_delivered(self) -> None:
        """``trio.from_thread.run(ref.cast, x)`` runs in the system's thread: it works."""
        async with world() as w:
            await from_worker_thread(lambda: trio.from_thread.run(w.ref.cast, "from a thread"))
            assert await w.ref.call("then") == "then"
        assert w.log == [("cast", "from a thread"), ("call", "then")]

    @bounded
    async def test_a_cast_nowait_through_trio_from_thread_run_sync_is_delivered(self) -> None:
        """``trio.from_thread.run_sync(ref.cast_nowait, x)`` works as well."""
        async with world() as w:
            await from_worker_thread(
                lambda: trio.from_thread.run_sync(w.ref.cast_nowait, "from a thread")
            )
            assert await w.ref.call("then") == "then"
        assert w.log == [("cast", "from a thread"), ("call", "then")]

    @bounded
    async def test_a_call_through_trio_from_thread_run_gets_its_reply(self) -> None:
        """A worker thread gets the reply of a call made through ``trio.from_thread.run``."""
        async with world() as w:
            reply = await from_worker_thread(lambda: trio.from_thread.run(w.ref.call, "question"))
        assert reply == "question"

    @bounded
    async def test_a_spawn_through_trio_from_thread_run_starts_the_agent(self) -> None:
        """The system's own methods work through ``trio.from_thread.run`` too."""
        async with world() as w:
            spawn = functools.partial(w.system.spawn, Recorder, [], name="from a thread")
            ref = await from_worker_thread(lambda: trio.from_thread.run(spawn))
            assert ref.alive
            assert w.system.whereis("from a thread") == ref


class TestReadsFromAThread:
    @bounded
    async def test_alive_can_be_read_from_a_worker_thread(self) -> None:
        """``alive`` is a plain read: any thread may ask."""
        async with world() as w:
            assert await from_worker_thread(lambda: (w.ref.alive, w.pool.alive)) == (True, True)

    @bounded
    async def test_whereis_works_from_a_worker_thread(self) -> None:
        """``whereis`` finds agents and pools from any thread."""
        async with world() as w:
            found = await from_worker_thread(
                lambda: (w.system.whereis("recorder"), w.system.whereis("pool"))
            )
            assert found == (w.ref, w.pool)

    @bounded
    async def test_get_stats_works_from_a_worker_thread(self) -> None:
        """The system's and the delivery layer's statistics can be read from any thread."""
        async with world() as w:
            stats, mailboxes = await from_worker_thread(w.system.get_stats)
            delivery = await from_worker_thread(w.system.delivery.get_stats)
            assert stats.agents_running == 3
            assert len(mailboxes) == 4
            assert delivery == w.system.delivery.get_stats()


#: Every method of a handler's context that changes state, as a handler's worker thread would
#: call it (the agent's own ref is what it monitors and sends to).
CONTEXT_CHANGES: dict[str, Callable[[Context], object]] = {
    "defer": lambda ctx: ctx.defer(),
    "monitor": lambda ctx: ctx.monitor(ctx.system.ref("recorder")),
    "send_after": lambda ctx: ctx.send_after(1, "later"),
    "start_soon": lambda ctx: ctx.start_soon(trio.sleep_forever),
    "stop": lambda ctx: ctx.stop(),
    "caller.reply": lambda ctx: ctx.caller.reply("too soon"),
    "caller.fail": lambda ctx: ctx.caller.fail(RuntimeError("too soon")),
}

#: The two ways to answer a deferred call, as a thread with a Trio run of its own would.
DEFERRED_ANSWERS: dict[str, Callable[[DeferredReply], object]] = {
    "reply": lambda deferred: in_own_trio_run(deferred.reply, "too soon"),
    "fail": lambda deferred: in_own_trio_run(deferred.fail, RuntimeError("too soon")),
}


class TestHandlersWorkerThreads:
    @pytest.mark.parametrize("name", CONTEXT_CHANGES)
    @bounded
    async def test_a_context_change_from_a_handlers_worker_thread_raises_wrong_thread(
        self, name: str
    ) -> None:
        """A handler that hands its ``ctx`` to a worker thread gets ``WrongThread`` there."""
        change = CONTEXT_CHANGES[name]

        async def in_worker_thread(ctx: Context) -> str:
            error = await from_worker_thread(lambda: raises_wrong_thread(lambda: change(ctx)))
            return type(error).__name__

        async with world() as w:
            runner = await w.system.spawn(Runner)
            assert await runner.call(in_worker_thread) == "WrongThread"
            assert await runner.call(lambda ctx: "still serving") == "still serving"

    @bounded
    async def test_demonitor_from_a_handlers_worker_thread_raises_wrong_thread(self) -> None:
        """Removing a monitor from a worker thread is refused too, and the monitor stays."""

        async def demonitor_in_worker_thread(ctx: Context) -> bool:
            monitor = ctx.monitor(ctx.system.ref("recorder"))
            await from_worker_thread(lambda: raises_wrong_thread(lambda: ctx.demonitor(monitor)))
            return ctx.demonitor(monitor)

        async with world() as w:
            runner = await w.system.spawn(Runner)
            assert await runner.call(demonitor_in_worker_thread) is True

    @bounded
    async def test_a_timer_cancelled_from_a_handlers_worker_thread_raises_wrong_thread(
        self,
    ) -> None:
        """Cancelling a ``send_after`` timer from a worker thread is refused: the timer stays
        pending, and cancels from the system's thread."""

        async def cancel_in_worker_thread(ctx: Context) -> tuple[bool, bool]:
            timer = ctx.send_after(60, "later")
            await from_worker_thread(lambda: raises_wrong_thread(timer.cancel))
            return timer.pending, timer.cancel()

        async with world() as w:
            runner = await w.system.spawn(Runner)
            assert await runner.call(cancel_in_worker_thread) == (True, True)

    @pytest.mark.parametrize("answer", DEFERRED_ANSWERS)
    @bounded
    async def test_a_deferred_reply_from_a_worker_thread_raises_wrong_thread(
        self, answer: str
    ) -> None:
        """A deferred reply given from a foreign thread is refused and stays to be given."""
        held: list[DeferredReply] = []
        outcomes: list[Any] = []
        async with world() as w:
            runner = await w.system.spawn(Runner)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_and_keep, runner, defer_into(held), outcomes)
                await trio.testing.wait_all_tasks_blocked()
                [deferred] = held
                give = DEFERRED_ANSWERS[answer]
                await from_worker_thread(lambda: raises_wrong_thread(lambda: give(deferred)))
                assert deferred.pending
                await deferred.reply("in time")
        assert outcomes == ["in time"]


def outcome_of(function: Callable[[], object]) -> Any:
    """What ``function`` returned, or the exception it raised."""
    try:
        return function()
    except Exception as error:
        return error


class TestThreadPortal:
    @bounded
    async def test_a_call_from_a_worker_thread_gets_its_reply(self) -> None:
        """``system.from_thread.call`` blocks a worker thread until the agent's reply."""
        async with world() as w:
            reply = await from_worker_thread(
                lambda: w.system.from_thread.call(w.ref, "question", timeout=BOUND)
            )
        assert reply == "question"
        assert w.log == [("call", "question")]

    @bounded
    async def test_a_cast_from_a_worker_thread_is_delivered(self) -> None:
        """``system.from_thread.cast`` returns once accepted; the agent then handles it."""
        async with world() as w:
            returned = await from_worker_thread(
                lambda: w.system.from_thread.cast(w.ref, "from a thread")
            )
            assert returned is None
            assert await w.ref.call("then") == "then"
        assert w.log == [("cast", "from a thread"), ("call", "then")]

    @bounded
    async def test_a_call_to_a_pool_from_a_worker_thread_gets_its_reply(self) -> None:
        """A pool's ref goes through the portal as an agent's does."""
        async with world() as w:
            reply = await from_worker_thread(
                lambda: w.system.from_thread.call(w.pool, "question", timeout=BOUND)
            )
        assert reply == "question"

    @bounded
    async def test_a_call_timeout_crosses_back_typed(self) -> None:
        """A call nobody answers in time raises ``CallTimeout`` in the worker thread."""
        held: list[DeferredReply] = []
        async with world() as w:
            runner = await w.system.spawn(Runner)
            error = await from_worker_thread(
                lambda: outcome_of(
                    lambda: w.system.from_thread.call(runner, defer_into(held), timeout=0.01)
                )
            )
        assert isinstance(error, CallTimeout)

    @bounded
    async def test_a_handlers_error_crosses_back_as_call_failed(self) -> None:
        """A callee that raises gives the worker thread ``CallFailed``, its error the cause."""

        def fail(ctx: Context) -> None:
            raise ValueError("no answer")

        async with world() as w:
            runner = await w.system.spawn(Runner)
            error = await from_worker_thread(
                lambda: outcome_of(lambda: w.system.from_thread.call(runner, fail, timeout=BOUND))
            )
        assert isinstance(error, CallFailed)
        assert isinstance(error.__cause__, ValueError)

    @pytest.mark.parametrize("name", ["call", "cast"])
    @bounded
    async def test_use_from_the_systems_own_thread_raises_wrong_thread(self, name: str) -> None:
        """From the system's thread the portal would deadlock: it refuses, naming the await."""
        async with world() as w:
            before = books(w.system)
            portal = getattr(w.system.from_thread, name)
            error = raises_wrong_thread(lambda: portal(w.ref, "x"))
            assert books(w.system) == before
        assert f"await ref.{name}" in str(error)
        assert "deadlock" in str(error)
        assert w.log == []

    @pytest.mark.parametrize("name", ["call", "cast"])
    @bounded
    async def test_use_after_shutdown_raises_system_closed(self, name: str) -> None:
        """After the system's block has exited (its Trio run still going): ``SystemClosed``."""
        async with world() as w:
            pass
        portal = getattr(w.system.from_thread, name)
        error = await from_worker_thread(lambda: outcome_of(lambda: portal(w.ref, "x")))
        assert isinstance(error, SystemClosed)
        assert w.log == []

    def test_use_after_the_trio_run_ended_raises_system_closed(self) -> None:
        """After the system's Trio run has ended, any thread gets ``SystemClosed``."""
        opened: list[World] = []

        async def open_and_close() -> None:
            async with world() as w:
                opened.append(w)

        run_in_own_thread(functools.partial(trio.run, open_and_close), wall_seconds=HANG)
        [w] = opened
        with pytest.raises(SystemClosed):
            w.system.from_thread.call(w.ref, "x", timeout=BOUND)
        with pytest.raises(SystemClosed):
            w.system.from_thread.cast(w.ref, "x")

    @bounded
    async def test_a_plain_thread_not_started_by_trio_can_call_and_cast(self) -> None:
        """A ``threading.Thread`` Trio knows nothing of gets in through the system's token."""
        outcomes: list[Any] = []
        async with world() as w:

            def in_plain_thread() -> None:
                w.system.from_thread.cast(w.ref, "from a plain thread")
                outcomes.append(w.system.from_thread.call(w.ref, "question", timeout=BOUND))

            thread = threading.Thread(target=in_plain_thread, daemon=True)
            thread.start()
            # Joined from a worker thread, so that the system's thread stays free to answer.
            await trio.to_thread.run_sync(thread.join, BOUND)
            assert not thread.is_alive()
        assert outcomes == ["question"]
        assert w.log == [("cast", "from a plain thread"), ("call", "question")]
