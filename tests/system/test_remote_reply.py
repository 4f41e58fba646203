"""A reply that crosses a process boundary: a call's envelope is encoded with its reply
address (registered in the system's table of pending calls), decoded as the far side would,
and answered through the table, which wakes the caller waiting on ``await``. The far side is
simulated by a mailbox driven by hand."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from terraphim_actors import AgentId, MessageSystem, call
from terraphim_actors._core.codec import decode, encode
from terraphim_actors.errors import CallTimeout


class TestRemoteReply:
    async def test_an_answer_through_the_table_reaches_the_waiting_caller(
        self, system: MessageSystem
    ) -> None:
        mailbox = system.register_agent(AgentId(name="far"))
        results: list[Any] = []

        async def caller() -> None:
            envelope, handle = call(None, "question", 5.0, recipient="far")
            await system.send_message(envelope)
            results.append(await handle)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            local = await mailbox.receive()
            assert local.reply is not None
            assert local.reply_to is None
            system.pending_calls.register(local.reply, local)
            remote = decode(encode(local))  # what the far node reads
            assert remote.reply is None
            assert remote.reply_to == local.reply_to
            assert remote.payload == "question"
            await trio.testing.wait_all_tasks_blocked()
            assert results == []
            assert remote.reply_to is not None
            assert system.pending_calls.answer(remote.reply_to, "an answer") is True
        assert results == ["an answer"]
        assert len(system.pending_calls) == 0

    async def test_a_failure_through_the_table_is_raised_in_the_caller(
        self, system: MessageSystem
    ) -> None:
        mailbox = system.register_agent(AgentId(name="far"))
        envelope, handle = call(None, "question", 5.0, recipient="far")
        await system.send_message(envelope)
        local = await mailbox.receive()
        assert local.reply is not None
        system.pending_calls.register(local.reply, local)
        reply_to = decode(encode(local)).reply_to
        assert reply_to is not None
        assert system.pending_calls.fail(reply_to, LookupError("no such thing"))
        with pytest.raises(LookupError, match="no such thing"):
            await handle

    async def test_a_late_answer_after_the_callers_timeout_is_dropped(
        self, system: MessageSystem
    ) -> None:
        mailbox = system.register_agent(AgentId(name="far"))
        envelope, handle = call(None, "slow question", 0.05, recipient="far")
        await system.send_message(envelope)
        local = await mailbox.receive()
        assert local.reply is handle
        system.pending_calls.register(handle, local)
        reply_to = decode(encode(local)).reply_to
        assert reply_to is not None
        assert reply_to in system.pending_calls
        with pytest.raises(CallTimeout):
            await handle
        assert reply_to not in system.pending_calls
        assert len(system.pending_calls) == 0
        assert system.pending_calls.answer(reply_to, "too late") is False

    async def test_an_ordinary_call_never_enters_the_table(self, system: MessageSystem) -> None:
        mailbox = system.register_agent(AgentId(name="near"))
        envelope, handle = call(None, "question", 5.0, recipient="near")
        await system.send_message(envelope)
        local = await mailbox.receive()
        assert local.reply is not None
        local.reply.reply("direct")
        assert await handle == "direct"
        assert len(system.pending_calls) == 0
