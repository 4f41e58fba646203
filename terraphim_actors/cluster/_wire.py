"""What crosses between nodes: a message with the time it has left, and a call's answer.

A message's body is what the codec would encode of it, in msgpack rather than the journal's
JSON (:mod:`._msgpack`: the same payload rules and registry, at a fraction of the cost). What
the codec leaves out because it only means something in one process travels in NATS headers:
how old the message is (its ``created_at`` is a time on the sender's Trio clock, so the
receiver rebuilds it on its own clock from the age, which keeps the message's expiry), which
attempt this is, and for a call the time left before its caller's deadline. ``Nats-Msg-Id``
carries the message id, so that JetStream drops a republished copy within its duplicate window.

An answer is the returned value in the same msgpack, or an error described by its class name
and text: an exception cannot cross as itself (its class may not exist on the caller's
node, and nothing is ever unpickled). The caller raises the same error a local call would: a
class of ``terraphim_actors.errors`` by its name, and a handler's own exception as
``CallFailed`` whose cause is a :class:`~terraphim_actors.errors.RemoteError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import errors
from .._core.bounded_repr import bounded_repr
from .._core.messages import Envelope
from ..errors import CallFailed, InvalidMessage, MessagingError, RemoteError
from ._msgpack import (
    BATCH_OVERHEAD,
    decode_envelope,
    decode_value,
    encode_envelope,
    encode_record,
    encode_value,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = [
    "decode_answer",
    "decode_message",
    "encode_answer",
    "encode_failure",
    "encode_message",
    "encode_record_for",
    "time_in_stream",
    "time_left",
]

#: The message id, which JetStream deduplicates publishes by.
MESSAGE_ID = "Nats-Msg-Id"
#: Seconds since the message was made, on the sender's clock.
AGE = "Ta-Age"
#: Which attempt at delivering it this is (0: the first).
ATTEMPT = "Ta-Attempt"
#: Seconds left before a call's caller stops waiting.
TIME_LEFT = "Ta-Time-Left"
#: How an answer ended: ``ok`` (its body is the value) or ``error``.
OUTCOME = "Ta-Outcome"


def encode_message(
    envelope: Envelope, now: float, max_payload: int, to: str = ""
) -> tuple[bytes, dict[str, str]]:
    """``envelope`` as the body and headers that carry it to node ``to``, at ``now``.

    Its ``Nats-Msg-Id`` is its message id with that node: JetStream drops a copy published to
    the same node again (within its duplicate window, across the whole stream), but keeps the
    hop of a message a node passes on to another (the recipient's exactly-once window still
    knows it by its message id).

    Raises:
        UnencodablePayload: its payload holds a value the codec cannot carry.
        InvalidMessage: encoded, it exceeds the servers' ``max_payload``.
    """
    body = _fitting(encode_envelope(envelope), envelope, max_payload)
    headers = {
        MESSAGE_ID: f"{int(envelope.id)}>{to}",
        AGE: repr(max(0.0, now - envelope.created_at)),
        ATTEMPT: str(envelope.attempt),
    }
    deadline = envelope.deadline
    if envelope.reply is not None and math.isfinite(deadline):
        headers[TIME_LEFT] = repr(max(0.0, deadline - now))
    return body, headers


def encode_record_for(envelope: Envelope, now: float, max_payload: int) -> bytes:
    """``envelope`` as a record of a batch of at-most-once casts (:mod:`._batches`), at
    ``now``: its age and attempt travel in the record, as headers carry them for a message
    alone.

    Raises:
        UnencodablePayload: its payload holds a value of a type the codec cannot carry.
        InvalidMessage: encoded, it exceeds what a NATS message may carry.
    """
    record = encode_record(envelope, max(0.0, now - envelope.created_at))
    return _fitting(record, envelope, max_payload - BATCH_OVERHEAD)


def _fitting(body: bytes, envelope: Envelope, limit: int) -> bytes:
    if len(body) > limit:
        raise InvalidMessage(
            f"{envelope!r} is {len(body)} bytes encoded, more than the {limit} bytes a"
            " NATS message may carry (the servers' max_payload)"
        )
    return body


def decode_message(
    body: bytes, headers: Mapping[str, str] | None, now: float, waited: float = 0.0
) -> Envelope:
    """The envelope that :func:`encode_message` sent, as of ``now`` on this node's clock,
    addressed to its recipient's name (a node finds its agents by name); ``waited`` is how
    long it then waited in JetStream (:func:`time_in_stream`), which ages it as much.

    Raises:
        InvalidMessage: the body or a header is not what a node sends.
    """
    headers = headers or {}
    try:
        age = float(headers.get(AGE, "0"))
        attempt = int(headers.get(ATTEMPT, "0"))
    except ValueError as error:
        raise _bad_headers(headers) from error
    if not (math.isfinite(age) and age >= 0 and attempt >= 0):
        raise _bad_headers(headers)
    return decode_envelope(body, now - age - waited, attempt)


def time_in_stream(message: Msg) -> float:
    """Seconds since JetStream stored ``message`` (by the server's clock, read on this host's:
    0 if they disagree that way). A message waiting there for its node to come back, or for
    another to take its recipient, gets no younger: its expiry holds."""
    stored = message.metadata.timestamp
    return max(0.0, time.time() - stored.timestamp())


def _bad_headers(headers: Mapping[str, str]) -> InvalidMessage:
    return InvalidMessage(f"bad headers on an arriving message: {bounded_repr(headers)}")


def time_left(headers: Mapping[str, str] | None) -> float:
    """Seconds a call's caller still waits, from its headers (``inf`` when it did not say).

    Raises:
        InvalidMessage: the header is not a number of seconds.
    """
    text = (headers or {}).get(TIME_LEFT)
    if text is None:
        return math.inf
    try:
        left = float(text)
    except ValueError as error:
        raise InvalidMessage(f"bad {TIME_LEFT} header: {bounded_repr(text)}") from error
    if math.isnan(left):
        raise InvalidMessage(f"bad {TIME_LEFT} header: {bounded_repr(text)}")
    return max(0.0, left)


def encode_answer(value: Any) -> tuple[bytes, dict[str, str]]:
    """A call's returned ``value`` as an answer; one the codec cannot carry becomes the
    ``CallFailed`` the caller gets instead."""
    try:
        return encode_value(value), {OUTCOME: "ok"}
    except MessagingError as error:
        failure = CallFailed(f"the reply could not be sent: {error}")
        failure.__cause__ = error
        return encode_failure(failure)


def encode_failure(error: BaseException) -> tuple[bytes, dict[str, str]]:
    """The error a call ended in, as an answer: its class by name, its text, and what caused
    it, also by name and text."""
    cause = error.__cause__
    document = {
        "type": type(error).__name__,
        "message": str(error),
        "cause": None if cause is None else _described(cause),
    }
    return encode_value(document), {OUTCOME: "error"}


def decode_answer(body: bytes, headers: Mapping[str, str] | None) -> tuple[bool, Any]:
    """``(True, value)`` for an answer, ``(False, error)`` for a failure, the error rebuilt as
    the caller's node raises it.

    Raises:
        InvalidMessage: ``body`` is not an answer a node sends.
    """
    outcome = (headers or {}).get(OUTCOME)
    if outcome == "ok":
        return True, decode_value(body)
    if outcome != "error":
        raise InvalidMessage(f"not an answer: {bounded_repr(body)}")
    try:
        document = decode_value(body)
        type_name, message, cause = document["type"], document["message"], document["cause"]
        if not (isinstance(type_name, str) and isinstance(message, str)):
            raise TypeError(type_name, message)
        error = _rebuilt(type_name, message)
        if cause is not None:
            error.__cause__ = RemoteError(str(cause["type_name"]), str(cause["message"]))
    except (ValueError, TypeError, KeyError) as error:
        raise InvalidMessage(f"not an answer: {bounded_repr(body)}") from error
    return False, error


def _described(error: BaseException) -> dict[str, str]:
    if isinstance(error, RemoteError):
        return {"type_name": error.type_name, "message": error.message}
    return {"type_name": type(error).__qualname__, "message": str(error)}


def _rebuilt(type_name: str, message: str) -> MessagingError:
    """The error of ``terraphim_actors.errors`` named ``type_name`` with ``message`` (a name
    this version does not know: a ``RemoteError``)."""
    cls = getattr(errors, type_name, None) if type_name in errors.__all__ else None
    if isinstance(cls, type) and issubclass(cls, MessagingError) and cls is not RemoteError:
        return cls(message)
    return RemoteError(type_name, message)
