"""What a :class:`ChatModel` is sent and what it answers: plain frozen records.

A request is checked when it is made, in the sender's task, so that a malformed one raises
there (``InvalidMessage`` for the messages, ``InvalidConfig`` for the options) instead of
reaching the model agent and failing in its handler. The answers are registered with the codec,
so that they can be journaled or cross to another node like any payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._behaviour.refs import AgentRef
from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count
from .._core.codec import register_payload
from ..errors import InvalidConfig, InvalidMessage

__all__ = ["ChatChunk", "ChatRequest", "ChatResponse", "ChatUsage"]

#: The keys a chat message may have: the subset of the API this agent speaks.
_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def _chat_messages(value: object) -> tuple[dict[str, str], ...]:
    """``value`` as a tuple of fresh dicts, each with a ``role`` and a ``content`` that are
    strings (and optionally a ``name``).

    Raises:
        InvalidMessage: it is not a non-empty list (or tuple) of such mappings.
    """
    if not isinstance(value, list | tuple) or not value:
        raise InvalidMessage(
            f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, "
            f"got {bounded_repr(value)}"
        )
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise InvalidMessage(
                f"messages[{position}] must be a dict, got {bounded_repr(message)}"
            )
        keys = set(message)
        if not {"role", "content"} <= keys or not keys <= _MESSAGE_KEYS:
            raise InvalidMessage(
                f"messages[{position}] must have the keys 'role' and 'content' (and optionally "
                f"'name'), got {sorted(map(str, keys))}"
            )
        for key, text in message.items():
            if not isinstance(text, str):
                raise InvalidMessage(
                    f"messages[{position}][{key!r}] must be a str, got {bounded_repr(text)}"
                )
        if not message["role"]:
            raise InvalidMessage(f"messages[{position}]['role'] must not be empty")
        messages.append(dict(message))
    return tuple(messages)


def _check_max_tokens(instance: Any, attribute: Any, value: object) -> None:
    if value is not None:
        check_count("max_tokens", value, minimum=1)


def _check_stream_to(instance: Any, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, AgentRef):
        raise InvalidConfig(f"stream_to must be an AgentRef or None, got {bounded_repr(value)}")


@attrs.frozen
class ChatRequest:
    """A chat completion to ask of a :class:`ChatModel`.

    ``messages`` are the conversation so far, ``{"role": ..., "content": ...}`` each (a
    ``name`` may be added), as the chat-completions API takes them; ``max_tokens`` bounds the
    answer's length; ``stream_to`` is a ref that gets the answer piece by piece as it is
    written, as :class:`ChatChunk` casts.

    Raises:
        InvalidMessage: ``messages`` is not a non-empty list of such dicts of strings.
        InvalidConfig: ``max_tokens`` is not a positive int, or ``stream_to`` is not a ref.
    """

    messages: tuple[dict[str, str], ...] = attrs.field(converter=_chat_messages)
    max_tokens: int | None = attrs.field(default=None, validator=_check_max_tokens, kw_only=True)
    stream_to: AgentRef | None = attrs.field(default=None, validator=_check_stream_to, kw_only=True)


@register_payload
@attrs.frozen
class ChatUsage:
    """The tokens one request cost, as the endpoint counted them (0 where it did not say)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt and completion together: what a token budget is charged."""
        return self.prompt_tokens + self.completion_tokens


@register_payload
@attrs.frozen
class ChatResponse:
    """The model's whole answer: its ``text``, its ``usage``, and why it ended
    (``finish_reason``: ``"stop"``, or ``"length"`` when ``max_tokens`` cut it short)."""

    text: str
    usage: ChatUsage
    finish_reason: str | None = None


@register_payload
@attrs.frozen
class ChatChunk:
    """A piece of an answer being written, cast to the request's ``stream_to``.

    ``message_id`` is the id of the request's message (what tells several streams apart),
    ``index`` counts the pieces from 0. The last chunk of an answer has an empty ``text`` and
    the whole answer as ``response``. If the request fails part way and its message is
    delivered again, its answer is streamed again from index 0.

    Chunks may arrive out of order: they are cast without waiting (``cast_nowait``), and one a
    full mailbox refused is retried by its guarantee behind the chunks after it (at most once,
    it is a dead letter, and the answer goes on without it). A receiver
    that assembles the text orders the pieces by ``index`` and keeps one per
    ``(message_id, index)``, starting again when index 0 comes again (a retried stream).
    """

    message_id: int
    index: int
    text: str
    response: ChatResponse | None = None
