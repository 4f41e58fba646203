"""The codec: a message written as bytes for the journal and the wire reads back as itself."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import terraphim_actors
from terraphim_actors import (
    AgentId,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    new_message_id,
    register_payload,
)
from terraphim_actors._core.codec import Codec, decode, encode
from terraphim_actors._core.messages import never_expiring
from terraphim_actors.errors import InvalidConfig, InvalidMessage, UnencodablePayload


@register_payload
@attrs.frozen
class Point:
    x: int
    y: float
    label: str | None = None


@register_payload
@dataclasses.dataclass(frozen=True)
class Shape:
    points: tuple[Point, ...]
    name: str
    data: bytes = b""
    anything: Any = None


@attrs.frozen
class Ping:
    seq: int


register_payload(Ping, tag="tests.Ping")


class Unregistered:
    pass


def message(envelope: Envelope) -> tuple[Any, ...]:
    """What a message is, field by field (messages compare by id alone)."""
    return (
        envelope.id,
        envelope.kind,
        envelope.payload,
        envelope.sender,
        envelope.recipient,
        envelope.options,
        envelope.created_at,
        dict(envelope.headers),
    )


def envelope(payload: Any, **fields: Any) -> Envelope:
    return Envelope(kind=MessageKind.CAST, payload=payload, **fields)


def cyclic() -> list[Any]:
    """A list that holds itself."""
    value: list[Any] = []
    value.append(value)
    return value


def nested(depth: int) -> list[Any]:
    """A list in a list ... ``depth`` deep."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
builtins = st.recursive(
    scalars | st.binary(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
points = st.builds(
    Point,
    x=st.integers(),
    y=st.floats(allow_nan=False),
    label=st.none() | st.text(max_size=8),
)
shapes = st.builds(
    Shape,
    points=st.lists(points, max_size=3).map(tuple),
    name=st.text(max_size=8),
    data=st.binary(max_size=8),
    anything=builtins | points,
)
payloads = st.recursive(
    builtins | points | shapes | st.builds(Ping, seq=st.integers()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
agent_ids = st.builds(AgentId, uid=st.uuids(), name=st.none() | st.text(max_size=8))
options = st.builds(
    MessageOptions,
    priority=st.sampled_from(Priority),
    timeout=st.floats(min_value=0.001, max_value=1e9),
    max_retries=st.none() | st.integers(min_value=0, max_value=100),
    retry_delay=st.none() | st.floats(min_value=0, max_value=1e9),
    guarantee=st.none() | st.sampled_from(DeliveryGuarantee),
)
envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(MessageKind),
    payload=payloads,
    sender=st.none() | agent_ids,
    recipient=st.none() | agent_ids | st.text(max_size=8),
    options=options | options.map(never_expiring),
    id=st.integers(min_value=1, max_value=2**128 - 1),
    created_at=st.floats(min_value=0, max_value=1e12),
    headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)


class TestRoundTrip:
    @given(envelopes)
    def test_a_decoded_message_equals_the_encoded_one(self, original: Envelope) -> None:
        """decode(encode(m)) is m again: builtins, registered classes, addresses, options."""
        assert message(decode(encode(original))) == message(original)

    @given(payloads)
    def test_payload_types_are_kept_exactly(self, payload: Any) -> None:
        """A tuple stays a tuple, bytes stay bytes, a registered class stays itself."""

        def shape(value: Any) -> Any:
            if isinstance(value, list | tuple):
                return (type(value), [shape(item) for item in value])
            if isinstance(value, dict):
                return (dict, {key: shape(item) for key, item in value.items()})
            return (type(value), value)

        assert shape(decode(encode(envelope(payload))).payload) == shape(payload)

    def test_encoding_is_json_bytes(self) -> None:
        """The bytes are ASCII JSON that names the format's version."""
        data = encode(envelope({"a": (1, b"x")}))
        assert data.startswith(b'{"v":1,')
        assert data.isascii()

    def test_infinities_nan_and_text_beyond_ascii_come_back_from_ascii_bytes(self) -> None:
        """What JSON has no plain spelling for is written as Python's json writes it."""
        payload = [math.inf, -math.inf, math.nan, "naïve ✓", "\x7f"]
        data = encode(envelope(payload))
        assert data.isascii()
        assert b"Infinity" in data
        back = decode(data).payload
        assert back[:2] == [math.inf, -math.inf]
        assert math.isnan(back[2])
        assert back[3:] == ["naïve ✓", "\x7f"]

    @given(envelopes)
    def test_the_standard_librarys_spelling_reads_back_the_same(self, original: Envelope) -> None:
        """Bytes as Python's json spells the document (as the codec wrote them before it
        used msgspec: ``1e-07``, ``\\u00e9``) decode to the same message."""
        data = encode(original)
        standard = json.dumps(json.loads(data), separators=(",", ":")).encode("ascii")
        assert message(decode(standard)) == message(decode(data))

    def test_a_reader_may_give_the_attempt_and_the_birth_on_its_own_clock(self) -> None:
        """decode(data, attempt=..., created_at=...) is the message on that attempt, born
        then; without them it is on its first attempt, born when its bytes say."""
        original = envelope("again")
        data = encode(original)
        later = decode(data, attempt=3, created_at=7.5)
        assert (later.attempt, later.created_at) == (3, 7.5)
        assert message(later) == message(original.evolve(created_at=7.5))
        first = decode(data)
        assert (first.attempt, first.created_at) == (0, original.created_at)

    def test_a_never_expiring_notice_stays_never_expiring(self) -> None:
        """The system's own notifications keep their infinite timeout."""
        notice = envelope(None, options=never_expiring(MessageOptions()))
        assert decode(encode(notice)).options.timeout == math.inf

    def test_a_registered_class_is_written_under_its_tag(self) -> None:
        """An explicit tag is what the bytes name, whatever the class is called."""
        assert b'"$payload":"tests.Ping"' in encode(envelope(Ping(seq=1)))


class TestLocalState:
    async def test_a_calls_reply_slot_is_dropped(self) -> None:
        """A call encodes without its live reply slot, deadline and attempt: they belong to
        the process that sent it."""
        call, _ = terraphim_actors.call(AgentId(), "question", 5.0, recipient="oracle")
        call.attempt = 3
        decoded = decode(encode(call))
        assert message(decoded) == message(call)
        assert decoded.reply is None
        assert decoded.deadline == math.inf
        assert decoded.attempt == 0

    def test_ids_keep_their_value(self) -> None:
        """A node-qualified id (far past 64 bits) reads back unchanged."""
        message_id = new_message_id()
        assert decode(encode(envelope(None, id=message_id))).id == message_id


class TestUnencodable:
    @pytest.mark.parametrize(
        "payload",
        [Unregistered(), {1: "int key"}, {"set": {1, 2}}, [object()], Priority.HIGH, 1 + 2j],
    )
    def test_an_unregistered_payload_type_raises_a_typed_error(self, payload: Any) -> None:
        """A value the codec cannot carry raises UnencodablePayload (also a TypeError)."""
        with pytest.raises(UnencodablePayload):
            encode(envelope(payload))

    def test_the_error_names_register_payload(self) -> None:
        """The message says how to make a type encodable."""
        with pytest.raises(TypeError, match="register_payload"):
            encode(envelope(Unregistered()))

    def test_headers_other_than_str_to_str_raise_invalid_message(self) -> None:
        """Headers are string metadata: anything else is refused before it reaches the wire."""
        with pytest.raises(InvalidMessage):
            encode(envelope(None, headers={"attempt": 1}))

    def test_only_an_envelope_is_encoded(self) -> None:
        """Anything else is not a message."""
        with pytest.raises(InvalidMessage):
            encode("not an envelope")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "payload",
        [cyclic(), nested(5_000), {"$dict": cyclic()}, 10**5_000],
        ids=["holds-itself", "nested-5000-deep", "holds-itself-in-a-dict", "int-of-5001-digits"],
    )
    def test_a_payload_json_cannot_hold_raises_unencodable_payload(self, payload: Any) -> None:
        """A payload that holds itself or is nested past the recursion limit, or an int longer
        than Python writes as text, is refused as the sender is promised, not with the
        RecursionError or ValueError the walk or the encoder hit."""
        with pytest.raises(UnencodablePayload):
            encode(envelope(payload))
        with pytest.raises(UnencodablePayload):
            Codec().encode_value(payload)

    @pytest.mark.parametrize(
        "fields",
        [
            {"headers": 5},
            {"kind": "cast"},
            {"id": "abc"},
            {"id": -1},
            {"id": 2**128},
            {"options": None},
            {"created_at": 10**400},
        ],
        ids=[
            "headers-not-a-mapping",
            "kind-not-a-MessageKind",
            "id-not-an-int",
            "id-negative",
            "id-beyond-128-bits",
            "options-not-MessageOptions",
            "created-at-beyond-a-float",
        ],
    )
    def test_an_envelope_with_a_field_a_message_cannot_hold_raises_invalid_message(
        self, fields: dict[str, Any]
    ) -> None:
        """An Envelope is not checked when it is made; one made by hand with a wrong field is
        refused when encoded, with the typed error, not an AttributeError or ValueError."""
        kind = fields.pop("kind", MessageKind.CAST)
        with pytest.raises(InvalidMessage):
            encode(Envelope(kind=kind, payload=1, **fields))


class TestDecodingBadInput:
    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"[]",
            b'{"v":2}',
            b'{"v":1}',
            b"\xff",
            encode(envelope(None)).replace(b'"kind":"cast"', b'"kind":"shout"'),
            encode(envelope(None)).replace(b'"headers":{}', b'"headers":{"a":1}'),
            encode(envelope(None)).replace(b'"payload":null', b'"payload":{"$what":1}'),
            encode(envelope(None)).replace(b'"payload":null', b'"payload":{"$payload":"x.Y"}'),
            encode(envelope(None, created_at=1.0)).replace(b"1.0", b"1" + b"0" * 400),
            encode(envelope(None)).replace(b"null", b"[" * 100_000 + b"]" * 100_000, 1),
        ],
        ids=[
            "empty",
            "a-list",
            "a-later-version",
            "no-fields",
            "not-utf-8",
            "an-unknown-kind",
            "headers-not-str",
            "an-unknown-marker",
            "a-payload-without-fields",
            "created-at-beyond-a-float",
            "payload-nested-100000-deep",
        ],
    )
    def test_bytes_not_written_by_the_codec_raise_invalid_message(self, data: bytes) -> None:
        """Malformed or foreign bytes raise InvalidMessage, never anything untyped."""
        with pytest.raises(InvalidMessage):
            decode(data)

    def test_a_tag_unknown_to_the_reading_codec_raises_invalid_message(self) -> None:
        """A codec reads only the payload types registered with it."""
        with pytest.raises(InvalidMessage, match=r"tests\.Ping"):
            Codec().decode(encode(envelope(Ping(seq=1))))


class TestRegisterPayload:
    def test_registering_again_under_the_same_tag_does_nothing(self) -> None:
        """register_payload is idempotent, and returns the class (a decorator)."""
        assert register_payload(Ping, tag="tests.Ping") is Ping

    def test_a_taken_tag_is_refused(self) -> None:
        """Two classes cannot share a tag: the bytes would be ambiguous."""
        codec = Codec()
        codec.register_payload(Point, tag="shared")
        with pytest.raises(InvalidConfig, match="shared"):
            codec.register_payload(Ping, tag="shared")

    def test_a_class_registered_under_another_tag_is_refused(self) -> None:
        """A class has one tag."""
        codec = Codec()
        codec.register_payload(Point, tag="one")
        with pytest.raises(InvalidConfig):
            codec.register_payload(Point, tag="two")

    @pytest.mark.parametrize("cls", [Unregistered, dict, 42])
    def test_only_attrs_classes_and_dataclasses_register(self, cls: Any) -> None:
        """Anything else has no fields that cattrs can rebuild."""
        with pytest.raises(InvalidConfig):
            Codec().register_payload(cls)

    def test_an_unregistered_subclass_of_a_registered_class_is_refused(self) -> None:
        """A subclass is not written under its parent's tag (it would come back as the
        parent)."""

        @attrs.frozen
        class Point3D(Point):
            z: int = 0

        with pytest.raises(UnencodablePayload):
            encode(envelope(Point3D(x=1, y=2.0)))
