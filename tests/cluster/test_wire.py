"""What crosses between nodes: a message keeps its expiry on the receiver's clock, a call its
time left, and an answer comes back as the value or as the error a local call would raise."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from terraphim_actors import Envelope, MessageKind, cast
from terraphim_actors._core.reply import ReplyHandle
from terraphim_actors.cluster._msgpack import batch_of, decode_batch, encode_record
from terraphim_actors.cluster._wire import (
    decode_answer,
    decode_message,
    encode_answer,
    encode_failure,
    encode_message,
    encode_record_for,
    time_left,
)
from terraphim_actors.errors import (
    AgentNotFound,
    CallFailed,
    InvalidMessage,
    RemoteError,
    UnencodablePayload,
)

LIMIT = 1024 * 1024


def test_a_message_arrives_as_old_as_it_left_on_the_receivers_clock() -> None:
    """The sender's clock means nothing to the receiver: the message's age crosses instead,
    so its expiry stays where it was."""
    envelope = cast(None, {"n": 1}, recipient="worker").evolve(created_at=100.0, attempt=2)
    body, headers = encode_message(envelope, now=103.5, max_payload=LIMIT, to="b")
    arrived = decode_message(body, headers, now=7.0)
    assert arrived.id == envelope.id
    assert arrived.payload == {"n": 1}
    assert arrived.created_at == pytest.approx(3.5)
    assert arrived.attempt == 2
    assert headers["Nats-Msg-Id"] == f"{int(envelope.id)}>b"  # the publish: message and node


def test_a_call_carries_the_time_its_caller_still_waits() -> None:
    envelope = cast(None, "x", recipient="worker").evolve(
        created_at=0.0, reply=ReplyHandle(10.0), deadline=10.0
    )
    _, headers = encode_message(envelope, now=4.0, max_payload=LIMIT)
    assert time_left(headers) == pytest.approx(6.0)
    assert time_left({}) == math.inf


def test_a_message_larger_than_the_servers_max_payload_is_refused() -> None:
    envelope = cast(None, "x" * 2000, recipient="worker")
    with pytest.raises(InvalidMessage, match="max_payload"):
        encode_message(envelope, now=0.0, max_payload=1000)


def test_an_unregistered_payload_type_is_refused() -> None:
    with pytest.raises(UnencodablePayload):
        encode_message(cast(None, object(), recipient="worker"), now=0.0, max_payload=LIMIT)


def test_a_payload_that_holds_itself_is_refused() -> None:
    payload: list[object] = []
    payload.append(payload)
    with pytest.raises(UnencodablePayload):
        encode_message(cast(None, payload, recipient="worker"), now=0.0, max_payload=LIMIT)


@pytest.mark.parametrize(
    "fields",
    [{"headers": 5}, {"id": "abc"}, {"options": None}, {"id": 2**200}],
    ids=["headers-not-a-mapping", "id-not-an-int", "options-not-MessageOptions", "id-too-long"],
)
def test_an_envelope_with_a_field_a_message_cannot_hold_is_an_invalid_message(
    fields: dict[str, Any],
) -> None:
    """An Envelope is not checked when it is made: one made by hand with a wrong field is
    refused with the typed error, as the journal's codec refuses it."""
    with pytest.raises(InvalidMessage):
        encode_message(
            Envelope(kind=MessageKind.CAST, payload=1, recipient="w", **fields),
            now=0.0,
            max_payload=LIMIT,
        )


@pytest.mark.parametrize(
    "headers",
    [{"Ta-Age": "soon"}, {"Ta-Age": "-1"}, {"Ta-Age": "nan"}, {"Ta-Attempt": "-2"}],
)
def test_an_arrival_with_bad_headers_is_an_invalid_message(headers: dict[str, str]) -> None:
    body, _ = encode_message(cast(None, "x", recipient="w"), now=0.0, max_payload=LIMIT)
    with pytest.raises(InvalidMessage):
        decode_message(body, headers, now=0.0)


def test_bytes_that_are_not_a_message_are_an_invalid_message() -> None:
    with pytest.raises(InvalidMessage):
        decode_message(b"\x00not json", {}, now=0.0)


def test_an_answer_crosses_as_its_value() -> None:
    value = {"a": [1, (2, b"3")], "o": None}
    assert decode_answer(*encode_answer(value)) == (True, value)


def test_a_handlers_error_crosses_as_call_failed_caused_by_a_remote_error() -> None:
    failure = CallFailed("the handler raised")
    failure.__cause__ = KeyError("missing")
    ok, error = decode_answer(*encode_failure(failure))
    assert not ok
    assert isinstance(error, CallFailed)
    assert str(error) == "the handler raised"
    assert isinstance(error.__cause__, RemoteError)
    assert error.__cause__.type_name == "KeyError"


def test_an_error_of_the_library_crosses_as_itself() -> None:
    ok, error = decode_answer(*encode_failure(AgentNotFound("no agent named 'w'")))
    assert not ok
    assert type(error) is AgentNotFound
    assert str(error) == "no agent named 'w'"


def test_an_error_class_the_caller_does_not_know_is_a_remote_error() -> None:
    class Strange(Exception):
        pass

    ok, error = decode_answer(*encode_failure(Strange("odd")))
    assert not ok
    assert isinstance(error, RemoteError)
    assert (error.type_name, error.message) == ("Strange", "odd")


def test_an_unencodable_return_value_fails_the_call() -> None:
    ok, error = decode_answer(*encode_answer(object()))
    assert not ok
    assert isinstance(error, CallFailed)
    assert isinstance(error.__cause__, RemoteError)
    assert error.__cause__.type_name == "UnencodablePayload"


def test_an_answer_without_its_outcome_header_is_an_invalid_message() -> None:
    with pytest.raises(InvalidMessage):
        decode_answer(b"1", {})


def test_a_batch_of_casts_arrives_in_order_each_as_old_as_it_left() -> None:
    envelopes = [
        cast(None, {"n": number}, recipient="worker").evolve(created_at=100.0, attempt=number)
        for number in range(3)
    ]
    records = [encode_record_for(envelope, now=101.5, max_payload=LIMIT) for envelope in envelopes]
    arrived = decode_batch(batch_of(records), now=7.0)
    assert [envelope.id for envelope in arrived] == [envelope.id for envelope in envelopes]
    assert [envelope.payload for envelope in arrived] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [envelope.attempt for envelope in arrived] == [0, 1, 2]
    assert [envelope.created_at for envelope in arrived] == pytest.approx([5.5] * 3)


def test_a_cast_too_large_for_a_batch_is_refused() -> None:
    envelope = cast(None, "x" * 2000, recipient="worker")
    with pytest.raises(InvalidMessage, match="max_payload"):
        encode_record_for(envelope, now=0.0, max_payload=1000)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00not a batch",
        msgspec.msgpack.encode([[-1.0, 0, None]]),
        msgspec.msgpack.encode([["soon", 0, None]]),
    ],
)
def test_bytes_that_are_not_a_batch_are_an_invalid_message(body: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_batch(body, now=0.0)


@pytest.mark.parametrize("age", [-1.0, math.nan, math.inf])
def test_a_record_with_a_bad_age_is_an_invalid_message(age: float) -> None:
    envelope = cast(None, "x", recipient="worker")
    record = encode_record(envelope, age)
    with pytest.raises(InvalidMessage):
        decode_batch(batch_of([record]), now=0.0)
