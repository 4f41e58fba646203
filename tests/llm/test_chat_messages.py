"""What a ChatModel is sent and answers: checked when made, carried by the codec; and what a
429's headers ask for."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from terraphim_actors import Envelope, MessageKind
from terraphim_actors._core.codec import decode, encode
from terraphim_actors.errors import InvalidConfig, InvalidMessage
from terraphim_actors.llm import ChatChunk, ChatRequest, ChatResponse, ChatUsage
from terraphim_actors.llm._errors import retry_after_seconds

chat_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()},
        optional={"name": st.text(min_size=1)},
    ),
    min_size=1,
    max_size=4,
)


class TestChatRequest:
    @given(chat_messages)
    def test_a_conversation_of_strings_is_taken_as_it_is(
        self, messages: list[dict[str, str]]
    ) -> None:
        assert list(ChatRequest(messages=messages).messages) == messages

    def test_it_keeps_a_copy_of_the_messages(self) -> None:
        """Changing the caller's list afterwards does not change the request."""
        messages = [{"role": "user", "content": "hi"}]
        request = ChatRequest(messages=messages)
        messages[0]["content"] = "changed"
        messages.append({"role": "user", "content": "more"})
        assert request.messages == ({"role": "user", "content": "hi"},)

    @pytest.mark.parametrize(
        "messages",
        [
            "hello",
            [],
            [{"role": "user"}],
            [{"content": "hi"}],
            [{"role": "user", "content": 3}],
            [{"role": "user", "content": "hi", "tools": "x"}],
            [{"role": "", "content": "hi"}],
            ["hi"],
            None,
        ],
    )
    def test_a_malformed_conversation_raises_invalid_message(self, messages: Any) -> None:
        with pytest.raises(InvalidMessage):
            ChatRequest(messages=messages)

    @pytest.mark.parametrize(
        "options",
        [{"max_tokens": 0}, {"max_tokens": True}, {"max_tokens": 1.5}, {"stream_to": "me"}],
    )
    def test_bad_options_raise_invalid_config(self, options: dict[str, Any]) -> None:
        with pytest.raises(InvalidConfig):
            ChatRequest(messages=[{"role": "user", "content": "hi"}], **options)


class TestAnswersThroughTheCodec:
    @pytest.mark.parametrize(
        "payload",
        [
            ChatResponse(text="hi", usage=ChatUsage(prompt_tokens=1, completion_tokens=2)),
            ChatChunk(message_id=2**100, index=3, text=" word"),
            ChatChunk(
                message_id=1,
                index=1,
                text="",
                response=ChatResponse("a", ChatUsage(0, 1), finish_reason="length"),
            ),
        ],
    )
    def test_an_answer_reads_back_as_itself(self, payload: object) -> None:
        """Registered payloads: they can be journaled, or cast to another node."""
        envelope = Envelope(kind=MessageKind.CAST, payload=payload)
        assert decode(encode(envelope)).payload == payload

    def test_usage_totals_prompt_and_completion(self) -> None:
        assert ChatUsage(prompt_tokens=3, completion_tokens=4).total_tokens == 7


def too_many_requests(**headers: str) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(429, headers=headers, request=request)
    return openai.RateLimitError("slow down", response=response, body=None)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"retry-after": "2"}, 2.0),
            ({"retry-after": "0.5"}, 0.5),
            ({"retry-after-ms": "250"}, 0.25),
            ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
            ({}, None),
            ({"retry-after": "soon"}, None),
            ({"retry-after": "-3"}, None),
            ({"retry-after": "nan"}, None),
        ],
    )
    def test_the_wait_a_429_asks_for(self, headers: dict[str, str], seconds: float | None) -> None:
        assert retry_after_seconds(too_many_requests(**headers)) == seconds

    def test_an_http_date_is_the_time_until_then(self) -> None:
        later = email.utils.formatdate(time.time() + 30, usegmt=True)
        seconds = retry_after_seconds(too_many_requests(**{"retry-after": later}))
        assert seconds is not None
        assert 25 < seconds <= 30


def test_the_public_names_are_exported_and_documented() -> None:
    import terraphim_actors.llm as llm

    for name in llm.__all__:
        assert not name.startswith("_")
        assert getattr(llm, name).__doc__, name
