"""A call's reply address as data: ``ReplyTo`` survives the codec, and ``PendingCalls`` turns
an answer sent to it back into the waiting caller's reply, holding no call once it is answered
or given up on."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from terraphim_actors import AgentId, MessageKind, call, cast, new_message_id
from terraphim_actors._core.codec import decode, encode
from terraphim_actors._core.ids import COUNTER_BITS, MessageId
from terraphim_actors._core.messages import Envelope
from terraphim_actors._core.reply import ReplyHandle
from terraphim_actors._core.reply_to import PendingCalls, ReplyTo, this_node
from terraphim_actors.errors import CallTimeout, InvalidMessage

reply_tos = st.builds(
    ReplyTo,
    node=st.integers(min_value=0, max_value=2**64 - 1),
    correlation=st.integers(min_value=1, max_value=2**128).map(MessageId),
)


def a_call() -> tuple[Envelope, ReplyHandle]:
    return call(AgentId(), "question", 5.0, recipient="oracle")


class TestReplyToAsData:
    @given(reply_tos)
    def test_a_reply_address_round_trips_through_the_codec(self, reply_to: ReplyTo) -> None:
        """Whatever the node and correlation, the decoded call names the same address."""
        envelope = Envelope(kind=MessageKind.CALL, payload=None, reply_to=reply_to)
        assert decode(encode(envelope)).reply_to == reply_to

    async def test_a_registered_call_decodes_with_its_address_and_no_slot(self) -> None:
        """Encoding a registered call writes its address; the decoded call has it, not the
        live slot."""
        envelope, handle = a_call()
        reply_to = PendingCalls().register(handle, envelope)
        decoded = decode(encode(envelope))
        assert decoded.reply_to == reply_to == envelope.reply_to
        assert decoded.reply is None
        assert decoded.deadline == math.inf

    async def test_a_local_call_has_no_address(self) -> None:
        """A call never registered (the local path) encodes with none."""
        envelope, _ = a_call()
        assert envelope.reply_to is None
        assert decode(encode(envelope)).reply_to is None
        assert b'"reply_to":null' in encode(envelope)

    def test_a_cast_built_for_a_send_has_no_address(self) -> None:
        """The hot path's envelope builder sets the field, to None."""
        assert cast(None, "hello").reply_to is None

    def test_bytes_written_before_reply_addresses_read_back_with_none(self) -> None:
        """An older message (no ``reply_to`` key) is still read."""
        data = encode(cast(None, "old")).replace(b',"reply_to":null', b"")
        assert b"reply_to" not in data
        assert decode(data).reply_to is None

    @pytest.mark.parametrize(
        "address",
        [b'"x"', b'{"node":1}', b'{"node":"1","correlation":2}', b'{"node":1,"correlation":true}'],
    )
    def test_a_malformed_address_raises_invalid_message(self, address: bytes) -> None:
        """An address that is not a node and a correlation id is not a message."""
        data = encode(cast(None, None)).replace(b'"reply_to":null', b'"reply_to":' + address)
        with pytest.raises(InvalidMessage):
            decode(data)

    def test_only_a_reply_to_is_written_as_an_address(self) -> None:
        """Anything else in ``reply_to`` is refused, not written as something unreadable."""
        envelope = cast(None, None)
        envelope.reply_to = ("node", 1)  # type: ignore[assignment]
        with pytest.raises(InvalidMessage):
            encode(envelope)


class TestNode:
    def test_the_node_is_the_incarnation_of_this_process_message_ids(self) -> None:
        """A reply address names the process by its message ids' high bits."""
        assert this_node() == new_message_id() >> COUNTER_BITS
        assert PendingCalls().node == this_node()

    async def test_an_address_is_the_tables_node_and_the_calls_id(self) -> None:
        envelope, handle = a_call()
        assert PendingCalls(node=7).register(handle, envelope) == ReplyTo(7, envelope.id)


class TestPendingCalls:
    async def test_an_answer_reaches_the_caller_and_leaves_the_table(self) -> None:
        envelope, handle = a_call()
        table = PendingCalls()
        reply_to = table.register(handle, envelope)
        assert reply_to in table
        assert len(table) == 1
        assert table.answer(reply_to, 42) is True
        assert await handle == 42
        assert len(table) == 0
        assert reply_to not in table

    async def test_a_failure_is_raised_in_the_caller(self) -> None:
        envelope, handle = a_call()
        table = PendingCalls()
        assert table.fail(table.register(handle, envelope), KeyError("gone")) is True
        with pytest.raises(KeyError, match="gone"):
            await handle
        assert len(table) == 0

    async def test_a_second_answer_is_dropped(self) -> None:
        """Once answered, the address is unknown: a duplicate answer returns False."""
        envelope, handle = a_call()
        table = PendingCalls()
        reply_to = table.register(handle, envelope)
        assert table.answer(reply_to, 1)
        assert table.answer(reply_to, 2) is False
        assert table.fail(reply_to, ValueError()) is False
        assert await handle == 1

    async def test_an_unknown_or_foreign_address_is_dropped(self) -> None:
        envelope, handle = a_call()
        table = PendingCalls()
        reply_to = table.register(handle, envelope)
        assert table.answer(ReplyTo(table.node, MessageId(envelope.id + 1)), 0) is False
        assert table.answer(ReplyTo(table.node ^ 1, envelope.id), 0) is False
        assert handle.pending
        assert reply_to in table

    async def test_an_abandoned_call_leaves_the_table_and_its_answer_is_dropped(self) -> None:
        """The caller giving up removes the entry at once: nothing leaks."""
        envelope, handle = a_call()
        table = PendingCalls()
        reply_to = table.register(handle, envelope)
        handle.abandon()
        assert len(table) == 0
        assert table.answer(reply_to, 42) is False

    async def test_many_calls_answered_or_given_up_leave_nothing(self) -> None:
        table = PendingCalls()
        handles = []
        for n in range(100):
            envelope, handle = a_call()
            reply_to = table.register(handle, envelope)
            handles.append(handle)
            if n % 2:
                table.answer(reply_to, n)
            else:
                handle.expire()
        assert len(table) == 0
        assert sum(handle.replied for handle in handles) == 50

    async def test_registering_again_returns_the_same_address(self) -> None:
        envelope, handle = a_call()
        table = PendingCalls()
        assert table.register(handle, envelope) == table.register(handle, envelope)
        assert len(table) == 1

    async def test_a_handle_served_or_answered_elsewhere_is_refused(self) -> None:
        """A slot a local handler serves, or one already answered, cannot be registered."""
        table = PendingCalls()
        served, served_handle = a_call()
        served_handle.serving = PendingCalls()
        with pytest.raises(ValueError, match="served"):
            table.register(served_handle, served)
        answered, answered_handle = a_call()
        answered_handle.reply(1)
        with pytest.raises(ValueError, match="pending"):
            table.register(answered_handle, answered)
        assert len(table) == 0

    async def test_a_late_answer_after_the_callers_timeout_is_dropped(self) -> None:
        envelope, handle = call(None, "slow", 0.01, recipient="far")
        table = PendingCalls()
        reply_to = table.register(handle, envelope)
        with pytest.raises(CallTimeout):
            await handle
        assert len(table) == 0
        assert table.answer(reply_to, "too late") is False

    async def test_a_cancelled_caller_leaves_the_table(self) -> None:
        envelope, handle = a_call()
        table = PendingCalls()
        table.register(handle, envelope)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.wait)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert len(table) == 0
