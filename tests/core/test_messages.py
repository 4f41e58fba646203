"""Messages: priorities, options and their validation, the envelope and its constructors."""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from agents import HUGE_PROMPT, Recorder
from hypothesis import given
from strategies import priorities
from supervised import Unprintable

from terraphim_actors import (
    AgentId,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    MessageSystem,
    Priority,
    ReplyHandle,
    call,
    cast,
    info,
)
from terraphim_actors._core.bounded_repr import REPR_LIMIT
from terraphim_actors._core.checks import MAX_SECONDS
from terraphim_actors._core.messages import MESSAGE_FIELDS, PER_ATTEMPT, Message
from terraphim_actors.errors import CallTimeout, InvalidConfig, InvalidMessage


class TestPriority:
    def test_priorities_are_ordered(self) -> None:
        """LOW < NORMAL < HIGH < CRITICAL."""
        assert Priority.LOW < Priority.NORMAL < Priority.HIGH < Priority.CRITICAL

    def test_sorting_lists_priorities_from_least_to_most_urgent(self) -> None:
        """Sorting priorities gives LOW first and CRITICAL last."""
        assert sorted(Priority, reverse=True) == [
            Priority.CRITICAL,
            Priority.HIGH,
            Priority.NORMAL,
            Priority.LOW,
        ]

    @given(first=priorities, second=priorities)
    def test_order_matches_declaration_order(self, first: Priority, second: Priority) -> None:
        """Any two priorities compare as their places in the declared order do."""
        order = list(Priority)
        assert (first < second) == (order.index(first) < order.index(second))


class TestMessageOptions:
    def test_defaults(self) -> None:
        """Defaults: NORMAL priority, 30 s timeout, the system's delivery config for the rest."""
        options = MessageOptions()
        assert options.priority is Priority.NORMAL
        assert options.timeout == 30.0
        assert options.max_retries is None
        assert options.retry_delay is None
        assert options.guarantee is None

    def test_options_are_keyword_only(self) -> None:
        """Options are given by name, never by position."""
        with pytest.raises(TypeError):
            MessageOptions(Priority.HIGH)  # type: ignore[misc]

    def test_options_are_frozen(self) -> None:
        """Options cannot change after they are made."""
        options = MessageOptions()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            options.timeout = 1.0  # type: ignore[misc]

    def test_valid_values_are_kept(self) -> None:
        """Every option given in range is kept as given."""
        options = MessageOptions(
            priority=Priority.HIGH,
            timeout=0.25,
            max_retries=0,
            retry_delay=0.0,
            guarantee=DeliveryGuarantee.AT_MOST_ONCE,
        )
        assert options.priority is Priority.HIGH
        assert options.timeout == 0.25
        assert options.max_retries == 0
        assert options.retry_delay == 0.0
        assert options.guarantee is DeliveryGuarantee.AT_MOST_ONCE

    @pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, math.nan, True, "5", None])
    def test_invalid_timeout_is_refused(self, timeout: object) -> None:
        """A zero, negative, NaN, bool, str or missing timeout raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="timeout"):
            MessageOptions(timeout=timeout)  # type: ignore[arg-type]

    @pytest.mark.parametrize("max_retries", [-1, True, 1.5, "3"])
    def test_invalid_max_retries_is_refused(self, max_retries: object) -> None:
        """A negative, bool, float or str retry count raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="max_retries"):
            MessageOptions(max_retries=max_retries)  # type: ignore[arg-type]

    @pytest.mark.parametrize("retry_delay", [-0.1, math.nan, True, "1"])
    def test_invalid_retry_delay_is_refused(self, retry_delay: object) -> None:
        """A negative, NaN, bool or str retry delay raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="retry_delay"):
            MessageOptions(retry_delay=retry_delay)  # type: ignore[arg-type]

    @pytest.mark.parametrize("priority", [2, "HIGH", None])
    def test_priority_must_be_a_priority(self, priority: object) -> None:
        """A priority that is not a Priority member raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="priority"):
            MessageOptions(priority=priority)  # type: ignore[arg-type]

    @pytest.mark.parametrize("guarantee", list(DeliveryGuarantee))
    def test_every_guarantee_can_be_asked_for_per_message(
        self, guarantee: DeliveryGuarantee
    ) -> None:
        """Each of the three guarantees is accepted and kept on the options."""
        assert MessageOptions(guarantee=guarantee).guarantee is guarantee

    def test_guarantee_must_be_a_delivery_guarantee(self) -> None:
        """A guarantee spelled as a string raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="guarantee"):
            MessageOptions(guarantee="at-most-once")  # type: ignore[arg-type]

    def test_invalid_config_is_a_value_error(self) -> None:
        """Existing ``except ValueError`` clauses catch a bad option."""
        with pytest.raises(ValueError, match="timeout"):
            MessageOptions(timeout=-1)

    @pytest.mark.parametrize(
        "timeout", [10**400, math.inf, MAX_SECONDS + 1, 10**9 + 1, 1e308], ids=repr
    )
    def test_a_timeout_beyond_the_bound_is_refused(self, timeout: float) -> None:
        """A timeout past ``MAX_SECONDS`` (10**400 was accepted, then raised OverflowError in
        the agent loop, and the message vanished) raises InvalidConfig naming the bound."""
        with pytest.raises(InvalidConfig, match=r"timeout .*at most 1e\+09"):
            MessageOptions(timeout=timeout)

    @pytest.mark.parametrize("retry_delay", [10**400, math.inf, MAX_SECONDS * 2])
    def test_a_retry_delay_beyond_the_bound_is_refused(self, retry_delay: float) -> None:
        """Retry delays stop at ``MAX_SECONDS`` too."""
        with pytest.raises(InvalidConfig, match="retry_delay"):
            MessageOptions(retry_delay=retry_delay)

    async def test_a_message_with_the_longest_timeout_is_handled_and_settled(
        self, system: MessageSystem
    ) -> None:
        """The longest timeout accepted works through the agent loop's expiry check: the
        message is handled, and nothing is left pending."""
        log: list[tuple[str, Any]] = []
        ref = await system.spawn(Recorder, log)
        longest = MessageOptions(timeout=MAX_SECONDS)
        await ref.cast("kept", options=longest)
        assert await ref.call("asked", options=longest) == "asked"
        assert log == [("cast", "kept"), ("call", "asked")]
        assert system.delivery.get_stats().pending == 0

    async def test_the_systems_own_notices_never_expire(self, system: MessageSystem) -> None:
        """Notices (``Down``, timers) carry a timeout no caller can ask for: they never
        expire, however long their recipient was busy."""
        notice = system.delivery.notice_options()
        assert notice.timeout == math.inf
        assert notice.guarantee is DeliveryGuarantee.AT_MOST_ONCE


class TestCast:
    async def test_cast_builds_a_cast_envelope(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``cast`` makes a CAST with its sender and payload, no reply slot, and no deadline."""
        sender = AgentId(name="sender")
        payload = {"work": [1, 2, 3]}
        await trio.sleep(7.0)
        envelope = cast(sender, payload)
        assert envelope.kind is MessageKind.CAST
        assert envelope.sender == sender
        assert envelope.payload is payload
        assert envelope.recipient is None
        assert envelope.reply is None
        assert envelope.deadline == math.inf
        assert envelope.attempt == 0
        assert envelope.created_at == trio.current_time()

    def test_cast_uses_default_options(self) -> None:
        """Without options a cast is NORMAL priority with the default options."""
        envelope = cast(None, "hi")
        assert envelope.options == MessageOptions()
        assert envelope.priority is Priority.NORMAL

    def test_cast_keeps_given_options(self) -> None:
        """Options passed to ``cast`` travel in the envelope; its priority is theirs."""
        options = MessageOptions(priority=Priority.CRITICAL)
        envelope = cast(None, "alarm", options)
        assert envelope.options is options
        assert envelope.priority is Priority.CRITICAL

    def test_cast_takes_a_recipient_keyword(self) -> None:
        """A recipient given by id or by registered name is kept."""
        target = AgentId()
        assert cast(None, 1, recipient=target).recipient == target
        assert cast(None, 1, recipient="counter").recipient == "counter"

    def test_each_envelope_gets_a_fresh_message_id(self) -> None:
        """Two envelopes never share a message id."""
        first, second = cast(None, 1), cast(None, 1)
        assert type(first.id) is int
        assert first.id != second.id


class TestCall:
    async def test_call_returns_envelope_and_its_reply_handle(self) -> None:
        """``call`` returns a CALL envelope and the handle its reply will arrive on."""
        sender = AgentId()
        envelope, handle = call(sender, "get", 5.0, recipient="counter")
        assert envelope.kind is MessageKind.CALL
        assert envelope.sender == sender
        assert envelope.payload == "get"
        assert envelope.recipient == "counter"
        assert isinstance(handle, ReplyHandle)
        assert envelope.reply is handle

    async def test_deadline_is_now_plus_timeout_on_the_trio_clock(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The envelope and the handle carry the Trio time at which the caller gives up."""
        await trio.sleep(12.0)
        envelope, handle = call(None, "get", 2.5)
        assert envelope.deadline == trio.current_time() + 2.5
        assert handle.deadline == envelope.deadline

    async def test_call_takes_options(self) -> None:
        """Options passed by keyword travel in a call's envelope."""
        options = MessageOptions(priority=Priority.HIGH)
        envelope, _ = call(None, "get", 1.0, options=options)
        assert envelope.priority is Priority.HIGH

    async def test_awaiting_the_handle_times_out_with_call_timeout(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With no reply, ``await handle`` raises CallTimeout once the timeout has passed."""
        start = trio.current_time()
        _, handle = call(None, "get", 3.0)
        with pytest.raises(CallTimeout):
            await handle
        assert trio.current_time() - start == pytest.approx(3.0)

    async def test_reply_before_await_is_returned(self) -> None:
        """A reply given before the caller awaits is what ``await handle`` returns."""
        _, handle = call(None, "get", 1.0)
        assert handle.reply(42)
        assert await handle == 42

    @pytest.mark.parametrize("timeout", [0, -1.0, math.nan, True])
    def test_invalid_timeout_is_refused(self, timeout: float) -> None:
        """A zero, negative, NaN or bool call timeout raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="timeout"):
            call(None, "get", timeout)


class TestInfo:
    def test_info_builds_an_info_envelope(self) -> None:
        """``info`` makes an INFO with no sender, no reply slot, and default options."""
        envelope = info("tick")
        assert envelope.kind is MessageKind.INFO
        assert envelope.payload == "tick"
        assert envelope.sender is None
        assert envelope.reply is None
        assert envelope.priority is Priority.NORMAL

    def test_info_takes_a_recipient_keyword(self) -> None:
        """An info can be addressed when it is built."""
        target = AgentId()
        assert info("tick", recipient=target).recipient == target


#: Fields an envelope may not hold, each with a value of the wrong kind.
BAD_FIELDS: dict[str, dict[str, Any]] = {
    "kind not a MessageKind": {"kind": "cast"},
    "id not an int": {"id": [1]},
    "id a bool": {"id": True},
    "sender not an AgentId": {"sender": 5},
    "recipient neither id nor name": {"recipient": 3.5},
    "options not MessageOptions": {"options": "urgent"},
    "created_at not a number": {"created_at": "x"},
    "created_at not finite": {"created_at": math.nan},
    "deadline NaN": {"deadline": math.nan},
    "headers not a mapping": {"headers": ["trace"]},
    "headers not strings": {"headers": {"trace": 1}},
    "attempt negative": {"attempt": -1},
    "reply not a handle": {"reply": "later"},
}


class TestEnvelope:
    @pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS)
    def test_a_field_of_the_wrong_kind_is_refused_as_it_is_built(
        self, fields: dict[str, Any]
    ) -> None:
        """A sender's mistake is ``InvalidMessage`` at once, not a recipient broken by it
        past the send (an unhashable id in a dedup window, a time no clock compares with)."""
        with pytest.raises(InvalidMessage):
            Envelope(**({"kind": MessageKind.CAST, "payload": "x"} | fields))

    async def test_send_message_refuses_an_envelope_changed_since_it_was_built(
        self, system: MessageSystem
    ) -> None:
        """The per-attempt fields can be assigned: ``send_message`` checks them again, and
        nothing is counted for the refused envelope."""
        ref = await system.spawn(Recorder, [])
        envelope = cast(None, "x", recipient=ref.id)
        envelope.attempt = -1
        with pytest.raises(InvalidMessage):
            await system.send_message(envelope)
        assert system.delivery.get_stats().sent == 0

    def test_evolve_readdresses_a_copy(self) -> None:
        """``envelope.evolve(recipient=...)`` readdresses a copy, same message id."""
        original = cast(AgentId(), "payload", recipient="old")
        new_recipient = AgentId(name="new")
        readdressed = original.evolve(recipient=new_recipient)
        assert readdressed.recipient == new_recipient
        assert original.recipient == "old"
        assert readdressed.id == original.id
        assert readdressed.payload is original.payload
        assert readdressed.sender == original.sender

    async def test_evolve_keeps_a_calls_reply_handle(self) -> None:
        """A readdressed call still answers its original caller."""
        envelope, handle = call(None, "get", 1.0)
        assert envelope.evolve(recipient="other").reply is handle

    @pytest.mark.parametrize("field", MESSAGE_FIELDS)
    def test_a_message_field_cannot_be_changed(self, field: str) -> None:
        """Once built, a message never changes: assigning or deleting any field raises, and
        the message is as it was."""
        envelope = cast(AgentId(), "payload", recipient="inbox")
        before = getattr(envelope, field)
        with pytest.raises(AttributeError, match="does not change"):
            setattr(envelope, field, "changed")
        with pytest.raises(AttributeError, match="does not change"):
            delattr(envelope, field)
        assert getattr(envelope, field) is before

    def test_the_attempt_state_changes_beside_the_message(self) -> None:
        """An envelope's per-attempt state can be set; its message is untouched by it."""
        envelope = cast(None, "payload", recipient="inbox")
        envelope.attempt = 2
        assert envelope.attempt == 2
        assert envelope.message == envelope
        assert not hasattr(envelope.message, "attempt")

    def test_the_bare_message_carries_every_message_field(self) -> None:
        """``envelope.message`` is the message alone, as a journal or the wire keeps it."""
        envelope = cast(AgentId(), "payload", recipient="inbox")
        message = envelope.message
        assert type(message) is Message
        assert all(getattr(message, f) == getattr(envelope, f) for f in MESSAGE_FIELDS)
        with pytest.raises(AttributeError):
            message.payload = "changed"  # type: ignore[misc]

    def test_messages_compare_by_id(self) -> None:
        """Copies of one message are equal (and hash alike); two sends of one payload are not."""
        original = cast(None, "payload", recipient="inbox")
        copy = original.evolve(recipient="elsewhere", attempt=3)
        assert copy == original
        assert hash(copy) == hash(original)
        assert cast(None, "payload", recipient="inbox") != original

    def test_evolve_refuses_an_unknown_field(self) -> None:
        """A misspelt field in ``evolve`` is an error, not a silently ignored change."""
        with pytest.raises(TypeError, match="recipeint"):
            cast(None, 1).evolve(recipeint="x")

    def test_a_message_has_no_headers_unless_given(self) -> None:
        """Headers default to an empty, read-only mapping."""
        assert dict(cast(None, 1).headers) == {}
        headers = Envelope(kind=MessageKind.CAST, payload=1, headers={"trace": "abc"}).headers
        assert headers == {"trace": "abc"}

    def test_unknown_attributes_cannot_be_added(self) -> None:
        """An envelope takes no attribute beyond its fields: a misspelt one raises."""
        envelope = cast(None, 1)
        with pytest.raises(AttributeError):
            envelope.extra = 1  # type: ignore[attr-defined]

    def test_envelopes_compare_by_identity(self) -> None:
        """Two envelopes with the same content are still two messages."""
        first = Envelope(kind=MessageKind.CAST, payload=1)
        second = Envelope(kind=MessageKind.CAST, payload=1)
        assert first != second

    def test_repr_cuts_a_long_payload_to_the_bound(self) -> None:
        """A 10 MB payload shows as its first characters: the repr stays a log line."""
        text = repr(cast(None, HUGE_PROMPT, recipient="inbox"))
        assert "'xxx" in text
        assert len(text) < REPR_LIMIT + 100

    def test_repr_of_a_payload_whose_repr_raises_says_unprintable(self) -> None:
        """A payload whose ``__repr__`` raises shows as ``<unprintable TypeName>``."""
        assert "<unprintable Unprintable>" in repr(cast(None, Unprintable(), recipient="inbox"))

    def test_repr_names_kind_priority_and_payload(self) -> None:
        """The repr shows what kind of message it is, how urgent, and what it carries."""
        text = repr(cast(None, "hello", MessageOptions(priority=Priority.HIGH), recipient="inbox"))
        assert "cast" in text
        assert "HIGH" in text
        assert "'hello'" in text
        assert "inbox" in text

    def test_casts_and_infos_can_be_built_outside_a_trio_run(self) -> None:
        """Casts and infos can be built before Trio runs, stamped on the monotonic clock."""
        before = time.monotonic()
        envelope = cast(None, 1)
        assert before <= envelope.created_at <= time.monotonic()
        assert info(1).created_at <= time.monotonic()

    def test_a_call_outside_a_trio_run_is_refused(self) -> None:
        """A call's deadline is on Trio's clock, so building one outside a run raises at once."""
        with pytest.raises(RuntimeError):
            call(None, "get", 1.0)


class TestForSend:
    def test_for_send_builds_what_the_keyword_constructor_builds(self) -> None:
        """The hot path's constructor fills every field as ``Envelope(...)`` would."""
        recipient = AgentId(name="to")
        sender = AgentId(name="from")
        options = MessageOptions(priority=Priority.HIGH)
        fast = Envelope.for_send(MessageKind.CAST, "x", sender, recipient, options, 12.5)
        slow = Envelope(
            kind=MessageKind.CAST, payload="x", sender=sender, recipient=recipient, options=options
        )
        for name in MESSAGE_FIELDS + PER_ATTEMPT:
            if name not in ("id", "created_at"):
                assert getattr(fast, name) == getattr(slow, name), name
        assert fast.created_at == 12.5
        assert type(fast.id) is int
        assert fast.id != slow.id
