"""Regressions found by a review of the hot-path rewrite: each test is one behaviour a user
relies on that the rewrite had broken, kept since it was mended."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentId,
    Envelope,
    Mailbox,
    MailboxConfig,
    MessageOptions,
    OverflowPolicy,
    Priority,
    cast,
    open_message_system,
)
from terraphim_actors.errors import AgentStopped


def message(payload: object, priority: Priority = Priority.NORMAL) -> Envelope:
    return cast(None, payload, MessageOptions(priority=priority))


# -- mailbox: a sender cancelled while parked ---------------------------------------------------


async def test_a_cancelled_blocked_sender_does_not_leave_a_bounded_mailbox_full_forever(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A sender blocked on a full mailbox is cancelled, and in the same scheduler round the
    receiver takes the waiting message: the mailbox is then empty and must take a new one.

    The rewrite counts parked senders in ``_senders``; the cancelled sender leaves the lot at
    once but decrements the counter only when it next runs, so the take in between reserves
    the freed slot for a sender that is gone, and the mailbox stays "full" with nothing in it.
    """
    mailbox = Mailbox(AgentId(), MailboxConfig(capacity=1, overflow=OverflowPolicy.BLOCK))
    mailbox.send_nowait(message("first"))
    scope = trio.CancelScope()

    async def blocked_sender() -> None:
        with scope:
            await mailbox.send(message("given up"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # its wait is aborted at once; it runs again only later
        taken = mailbox.try_receive()
    assert taken is not None
    assert taken.payload == "first"
    assert len(mailbox) == 0
    mailbox.send_nowait(message("second"))  # raises MailboxFull: the slot is kept for nobody
    assert len(mailbox) == 1


# -- shutdown: reverse start order ---------------------------------------------------------------


class Store(Agent):
    async def on_start(self) -> None:
        self.saved: list[Any] = []

    async def handle_call(self, msg: Any, ctx: Any) -> Any:
        self.saved.append(msg)
        return "saved"


class Flusher(Agent):
    """On stop, saves its state in an agent started before it (as OTP's reverse stop order
    allows: what a child depends on is still running when it stops)."""

    def __init__(self, store: Any, outcome: list[Any]) -> None:
        self.store = store
        self.outcome = outcome

    async def on_stop(self, reason: Any) -> None:
        try:
            self.outcome.append(await self.store.call("final state", timeout=1.0))
        except AgentStopped as error:
            self.outcome.append(error)


async def test_at_shutdown_an_agent_stopping_can_still_call_an_agent_spawned_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """DESIGN: shutdown in reverse start order. The rewrite closes every root agent's mailbox
    at once, so the older agent refuses the newer one's last call."""
    outcome: list[Any] = []
    async with open_message_system() as system:
        store = await system.spawn(Store, name="store")
        await system.spawn(Flusher, store, outcome, name="flusher")
    assert outcome == ["saved"]


# -- supervisor: the check against a start waiting for itself ---------------------------------


class Worker(Agent):
    async def handle_call(self, msg: Any, ctx: Any) -> Any:
        return msg


class SpawnsOnRequest(Agent):
    """Spawns a worker under the root when asked: from a handler, once it has started."""

    async def handle_call(self, msg: Any, ctx: Any) -> Any:
        worker = await ctx.system.spawn(Worker)
        return await worker.call("spawned")


class SlowToStart(Agent):
    async def on_start(self) -> None:
        await trio.sleep(1)


async def test_an_agent_already_started_in_a_subtree_still_starting_can_spawn_under_the_root(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Only a caller that the start waits for (the child being started, in ``on_start``)
    would deadlock. A sibling that has finished starting handles messages; its spawn just waits
    for the root until the subtree has started. The rewrite's walk up the tree refuses it with
    ``SupervisorError`` (to its caller: ``CallFailed``), depending on timing alone."""
    async with open_message_system() as system, trio.open_nursery() as nursery:
        nursery.start_soon(
            system.start_supervisor,
            [system.agent_spec(SpawnsOnRequest, name="spawner"), system.agent_spec(SlowToStart)],
        )
        await trio.testing.wait_all_tasks_blocked()  # spawner running, SlowToStart in on_start
        assert await system.ref("spawner").call("spawn", timeout=5.0) == "spawned"
