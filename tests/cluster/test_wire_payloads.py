"""Payloads between nodes follow the codec's rules: every value the codec carries arrives equal
and of the same type, registered classes included wherever they sit, anything else is refused at
the send, and bytes that are not a message (or name a payload type the receiving node does not
know) are an invalid message, never a crash."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from typing import Any

import attrs
import pytest

from terraphim_actors import AgentId, MessageOptions, cast, register_payload
from terraphim_actors._core.ids import MessageId
from terraphim_actors._core.reply import ReplyHandle
from terraphim_actors._core.reply_to import ReplyTo
from terraphim_actors.cluster._wire import (
    decode_answer,
    decode_message,
    encode_answer,
    encode_message,
)
from terraphim_actors.errors import InvalidMessage, UnencodablePayload

LIMIT = 1024 * 1024


@attrs.frozen
class Point:
    x: int
    y: float


@dataclasses.dataclass(frozen=True)
class Route:
    name: str
    stops: list[Point]
    via: tuple[int, ...]
    note: Any = None


register_payload(Point, tag="tests.cluster.wire.Point")
register_payload(Route, tag="tests.cluster.wire.Route")


@attrs.frozen
class Sent:
    """Registered here as ``tests.cluster.wire.Sent``; a receiver that registered nothing under
    that tag is played by renaming the tag in the bytes."""

    n: int


register_payload(Sent, tag="tests.cluster.wire.Sent")


def crossed(payload: Any) -> Any:
    """``payload`` after a trip to another node in a message."""
    envelope = cast(None, payload, recipient="worker")
    body, headers = encode_message(envelope, now=0.0, max_payload=LIMIT)
    return decode_message(body, headers, now=0.0).payload


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0`` and ``(1,) != [1]``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@pytest.mark.parametrize(
    "number",
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**200, -(2**200), 10**40 + 7],
)
def test_ints_of_any_size_arrive_whole(number: int) -> None:
    assert same(crossed(number), number)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan, -0.0, 1.5e-300])
def test_floats_arrive_whole_infinities_and_nan_included(number: float) -> None:
    assert same(crossed(number), number)


@pytest.mark.parametrize("data", [b"", b"\x00\xff\xc1 not text", bytes(range(256)) * 40])
def test_bytes_arrive_as_bytes(data: bytes) -> None:
    assert same(crossed(data), data)


def test_nested_containers_arrive_with_their_types() -> None:
    payload = {
        "list": [1, "two", 3.0, None, True, b"\x05"],
        "tuple": (1, (2, [3, (4,)]), ()),
        "deep": {"a": {"b": {"c": [{"d": (2**70,)}]}}},
        "empty": {},
    }
    assert same(crossed(payload), payload)


def test_registered_attrs_and_dataclass_payloads_arrive_as_themselves() -> None:
    route = Route("loop", [Point(1, 2.0), Point(-3, math.inf)], (7, 8), note=Point(0, 0.5))
    arrived = crossed(route)
    assert type(arrived) is Route
    assert arrived == route
    assert type(arrived.stops[1]) is Point
    assert type(arrived.note) is Point


def test_registered_payloads_inside_lists_dicts_and_tuples_arrive_as_themselves() -> None:
    payload = {"points": [Point(1, 1.0), {"p": Point(2, 2.0)}], "pair": (Point(3, 3.0), 4)}
    arrived = crossed(payload)
    assert same(arrived, payload)
    assert arrived == payload


def test_a_calls_answer_carries_the_same_payloads() -> None:
    value = [Route("r", [], ()), 2**100, math.inf, b"raw", ("t",)]
    ok, answer = decode_answer(*encode_answer(value))
    assert ok
    assert same(answer, value)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Unregistered:
    n: int


@attrs.define
class UnregisteredAttrs:
    n: int


@pytest.mark.parametrize(
    "payload",
    [
        object(),
        Unregistered(1),
        UnregisteredAttrs(1),
        {1, 2},
        frozenset(),
        bytearray(b"x"),
        Colour.RED,
        datetime.date(2026, 1, 1),
        AgentId(),
        [1, {"nested": Unregistered(2)}],
    ],
    ids=lambda payload: type(payload).__name__,
)
def test_a_payload_holding_an_unregistered_type_is_refused_at_the_send(payload: Any) -> None:
    with pytest.raises(UnencodablePayload):
        encode_message(cast(None, payload, recipient="worker"), now=0.0, max_payload=LIMIT)


@pytest.mark.parametrize("key", [1, None, (1, 2), b"k", 1.5])
def test_a_dict_with_a_key_that_is_not_a_str_is_refused_at_the_send(key: Any) -> None:
    with pytest.raises(UnencodablePayload, match="keys must be str"):
        encode_message(
            cast(None, {"outer": {key: 1}}, recipient="worker"), now=0.0, max_payload=LIMIT
        )


def fixed_body(payload: Any) -> tuple[bytes, dict[str, str]]:
    """A message's body and headers with no random bytes (id and clock fixed), so that a
    test can find and change a value in them."""
    envelope = cast(None, payload, recipient="w").evolve(id=MessageId(1), created_at=0.0)
    return encode_message(envelope, now=0.0, max_payload=LIMIT)


A_CALL = cast(
    AgentId(name="sender"),
    {"n": (1, 2**80)},
    MessageOptions(timeout=5.0),
    recipient=AgentId(name="worker"),
)
A_CALL = A_CALL.evolve(
    id=MessageId(2**127 + 5),
    reply=ReplyHandle(10.0),
    deadline=10.0,
    reply_to=ReplyTo(node=2**64 - 1, correlation=MessageId(2**127 + 5)),
)


def a_body() -> bytes:
    return encode_message(A_CALL, now=0.0, max_payload=LIMIT)[0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",  # [1, 2, 3]
        b'{"v":1,"id":1,"kind":"cast"}',
        a_body()[:-3],  # cut short
        a_body() + b"\x00",  # with trailing bytes
        b"\x02" + a_body()[1:],  # not an array
        a_body()[:1] + b"\x02" + a_body()[2:],  # an unknown format version
    ],
    ids=["empty", "invalid opcode", "short array", "json", "cut", "trailing", "int", "version"],
)
def test_bytes_that_are_not_a_message_are_an_invalid_message(body: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_message(body, {}, now=0.0)


def test_a_well_formed_message_still_decodes_after_the_garbage_above() -> None:
    """The garbage cases are near misses of this body, which is itself a message."""
    arrived = decode_message(a_body(), {}, now=0.0)
    assert arrived.id == 2**127 + 5
    assert same(arrived.payload, {"n": (1, 2**80)})
    assert arrived.recipient == "worker"  # by name: the node finds its agents so
    assert arrived.sender == A_CALL.sender
    assert arrived.sender is not None
    assert arrived.sender.name == "sender"
    assert arrived.reply_to == A_CALL.reply_to
    assert arrived.options == A_CALL.options


def test_a_payload_nested_deeper_than_the_stack_is_an_invalid_message_on_arrival() -> None:
    body, headers = fixed_body("PLACEHOLDER")
    deep = body.replace(b"\xabPLACEHOLDER", b"\x91" * 100_000 + b"\x01")  # [[[...1]]]
    with pytest.raises(InvalidMessage):
        decode_message(deep, headers, now=0.0)
    with pytest.raises(InvalidMessage):
        decode_answer(b"\x91" * 100_000 + b"\x01", {"Ta-Outcome": "ok"})


def test_a_payload_nested_deeper_than_the_stack_is_refused_at_the_send() -> None:
    payload: list[Any] = []
    for _ in range(100_000):
        payload = [payload]
    with pytest.raises(UnencodablePayload, match="nested too deeply"):
        encode_message(cast(None, payload, recipient="worker"), now=0.0, max_payload=LIMIT)


def test_a_payload_tag_the_receiving_node_does_not_know_is_an_invalid_message() -> None:
    body, headers = fixed_body([Sent(1)])
    unknown_there = body.replace(b"tests.cluster.wire.Sent", b"tests.cluster.wire.Gone")
    with pytest.raises(InvalidMessage, match="not registered"):
        decode_message(unknown_there, headers, now=0.0)


def test_a_registered_payload_whose_fields_do_not_fit_its_class_is_an_invalid_message() -> None:
    body, headers = fixed_body(Point(1, 2.0))
    assert body.count(b"\xa1y") == 1  # the field name "y"
    with pytest.raises(InvalidMessage):
        decode_message(body.replace(b"\xa1y", b"\xa1z"), headers, now=0.0)
