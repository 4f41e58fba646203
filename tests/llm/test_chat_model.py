"""ChatModel against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/chat_server.py).

These tests run on the real clock (the server answers over sockets, which a virtual clock
would jump past); every wait is bounded, and the server stops however a test ends.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from agents import lenient_config
from chat_server import ChatServer, Failure

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    CircuitState,
    Context,
    DeadLetter,
    DeadLetterReason,
    MailboxConfig,
    MessageSystem,
    OverflowPolicy,
    TokenBudget,
    open_message_system,
)
from terraphim_actors.errors import AgentStartFailed, CallFailed, CallTimeout, InvalidConfig
from terraphim_actors.llm import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    ChatResponse,
    ChatUsage,
    ContextTooLong,
    ModelRejected,
    ModelUnavailable,
)
from terraphim_actors.testing import TestProbe

#: Real seconds any one test may take: the server answers in milliseconds.
LIMIT = 5.0
SECRET = "sk-test-0123456789-do-not-print"


def ask(
    text: str, *, max_tokens: int | None = None, stream_to: AgentRef | None = None
) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "user", "content": text}], max_tokens=max_tokens, stream_to=stream_to
    )


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as running:
        yield running


async def spawn_model(system: MessageSystem, server: ChatServer, **options: Any) -> AgentRef:
    return await system.spawn(
        ChatModel, base_url=server.base_url, model="tiny", api_key=SECRET, **options
    )


class Late(ChatModel):
    """A ChatModel whose instance asks the endpoint for its first call only once the call's
    deadline has passed (it runs on after its caller gave up), and for the next ones at once."""

    finish_abandoned_calls = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.late = True

    async def handle_call(self, message: Any, ctx: Context) -> ChatResponse | None:
        if self.late:
            self.late = False
            await trio.sleep_until(ctx.deadline + 0.05)
        return await self.complete(message, ctx)


class Stuck(Agent):
    """A stream's reader that holds its first chunk until ``release`` is set, so that its
    bounded mailbox fills and refuses the chunks after it."""

    def __init__(self, release: trio.Event) -> None:
        self.release = release

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await self.release.wait()


class TestCall:
    async def test_a_call_returns_the_whole_answer_with_its_usage(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The answer's text, the tokens the endpoint counted, and why it ended."""
        model = await spawn_model(system, server)
        with trio.fail_after(LIMIT):
            response = await model.call(ask("hello there"))
        assert response == ChatResponse(
            text="echo: hello there",
            usage=ChatUsage(prompt_tokens=2, completion_tokens=3),
            finish_reason="stop",
        )

    async def test_the_request_carries_the_model_messages_and_max_tokens(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """What the endpoint is sent is the chat-completions request for the model."""
        model = await spawn_model(system, server)
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three"},
        ]
        with trio.fail_after(LIMIT):
            response = await model.call(ChatRequest(messages=messages, max_tokens=2))
        assert (response.text, response.finish_reason) == ("echo: one", "length")
        [received] = server.received
        assert received.body["model"] == "tiny"
        assert received.body["messages"] == messages
        assert received.body["max_tokens"] == 2

    async def test_a_call_gets_what_its_deadline_leaves_as_the_request_timeout(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The SDK is given the caller's remaining time, not the agent's longer timeout."""
        model = await spawn_model(system, server, timeout=60.0)
        with trio.fail_after(LIMIT):
            await model.call(ask("hi"), timeout=2.0)
        sent = float(server.received[0].headers["x-stainless-read-timeout"])
        assert 1.0 < sent <= 2.0

    async def test_a_message_that_is_not_a_request_is_not_handled(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Anything but a ChatRequest is refused without asking the endpoint."""
        model = await spawn_model(system, server)
        with trio.fail_after(LIMIT), pytest.raises(CallFailed):
            await model.call("hello")
        assert server.received == []


class TestStreaming:
    async def test_a_streamed_call_casts_the_pieces_and_returns_the_whole_answer(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Pieces in order, then a last chunk with the whole answer; the call returns it."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        with trio.fail_after(LIMIT):
            response = await model.call(ask("a b", stream_to=probe.ref))
            chunks = await probe.expect_n(4, ChatChunk)
        assert [chunk.text for chunk in chunks] == ["echo:", " a", " b", ""]
        assert [chunk.index for chunk in chunks] == [0, 1, 2, 3]
        assert len({chunk.message_id for chunk in chunks}) == 1
        assert chunks[-1].response == response
        assert response.text == "echo: a b"
        assert response.usage == ChatUsage(prompt_tokens=2, completion_tokens=3)
        assert server.received[0].body["stream"] is True

    async def test_a_cast_request_is_answered_to_its_stream_to_only(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """A cast's answer goes where the request says, its last chunk the whole answer."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        with trio.fail_after(LIMIT):
            await model.cast(ask("ping", stream_to=probe.ref))
            chunks = await probe.expect_n(3, ChatChunk)
        assert chunks[-1].response is not None
        assert chunks[-1].response.text == "echo: ping"

    async def test_a_stream_broken_by_an_error_event_is_delivered_again_from_the_start(
        self, server: ChatServer
    ) -> None:
        """The endpoint fails mid-answer: ModelUnavailable, so the cast is retried, and its
        answer is streamed again from index 0."""
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            server.fail_next(Failure(500, "the model crashed", mid_stream=True))
            with trio.fail_after(LIMIT):
                await model.cast(ask("ping", stream_to=probe.ref))
                chunks = await probe.expect_n(4, ChatChunk)
            assert [(chunk.index, chunk.text) for chunk in chunks] == [
                (0, "echo:"),
                (0, "echo:"),
                (1, " ping"),
                (2, ""),
            ]
            assert system.delivery.get_stats().retried == 1

    async def test_a_stream_whose_connection_breaks_is_model_unavailable(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The connection is reset while the answer is read (a crashed server or proxy): the
        caller gets ModelUnavailable, the agent keeps its instance, and our error keeps
        nothing of the HTTP layer's, whose request holds the key."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        server.fail_next(Failure(500, mid_stream=True, breaks_by="reset"))
        with trio.fail_after(LIMIT):
            with pytest.raises(CallFailed) as failed:
                await model.call(ask("hi", stream_to=probe.ref))
            assert (await model.call(ask("again"))).text == "echo: again"
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert (error.__cause__, error.__context__) == (None, None)
        assert SECRET not in repr(error)
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_cast_whose_stream_breaks_is_delivered_again(self, server: ChatServer) -> None:
        """A broken connection is worth another try: the cast's guarantee delivers it again,
        and the second answer reaches stream_to whole."""
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            server.fail_next(Failure(500, mid_stream=True, breaks_by="reset"))
            with trio.fail_after(LIMIT):
                await model.cast(ask("ping", stream_to=probe.ref))
                last = await probe.fish_for(lambda chunk: chunk.response is not None)
            assert last.response.text == "echo: ping"
            assert system.delivery.get_stats().retried == 1
            assert system.get_stats()[0].agent_restarts == 0

    async def test_a_stream_that_ends_before_the_answer_is_model_unavailable(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The body ends after a piece, with no finish reason and no ``[DONE]``: what came is
        not the whole answer, so it is not returned as one (nor sent as the last chunk)."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        server.fail_next(Failure(500, mid_stream=True, breaks_by="end"))
        with trio.fail_after(LIMIT):
            with pytest.raises(CallFailed) as failed:
                await model.call(ask("hi there", stream_to=probe.ref))
            assert (await probe.expect(ChatChunk)).text == "echo:"
            await model.call(ask("again", stream_to=probe.ref))
            chunks = await probe.expect_n(3, ChatChunk)
        assert [chunk.text for chunk in chunks] == ["echo:", " again", ""]
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert "ended before the answer did" in str(error)

    @pytest.mark.at_most_once
    async def test_chunks_a_full_mailbox_refuses_do_not_fail_the_answer(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """At most once, a chunk the reader's full mailbox refused is a dead letter: the call
        still returns the whole answer the endpoint gave, and the agent keeps its instance."""
        release = trio.Event()
        reader = await system.spawn(
            Stuck, release, mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT)
        )
        model = await spawn_model(system, server)
        try:
            with trio.fail_after(LIMIT):
                response = await model.call(ask("a b c d e", stream_to=reader))
        finally:
            release.set()
        assert response.text == "echo: a b c d e"
        refused = [
            letter
            for letter in system.dead_letters
            if isinstance(letter.envelope.payload, ChatChunk)
            and letter.reason is DeadLetterReason.MAILBOX_FULL
        ]
        assert refused
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_caller_that_gives_up_mid_stream_gets_call_timeout(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The handler is cancelled while it reads the stream; the agent takes the next call
        (and nothing of the HTTP layer is left unfinished: no ResourceWarning)."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        server.pause_streams = True
        with trio.fail_after(LIMIT):
            with pytest.raises(CallTimeout):
                await model.call(ask("a b", stream_to=probe.ref), timeout=0.3)
            assert (await probe.expect(ChatChunk)).text == "echo:"
            server.pause_streams = False
            server.release()
            assert (await model.call(ask("next"))).text == "echo: next"

    async def test_casts_without_stream_to_do_not_restart_the_agent(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """More of them than the supervisor's restart intensity (5 a minute by default): each
        is a REJECTED dead letter, the agent resumes, and it answers the next call."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        system.subscribe_dead_letters(probe.ref)
        with trio.fail_after(LIMIT):
            for _ in range(6):
                await model.cast(ask("ping"))
            letters = await probe.expect_n(6, DeadLetter)
            assert (await model.call(ask("hi"))).text == "echo: hi"
        assert {letter.reason for letter in letters} == {DeadLetterReason.REJECTED}
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_cast_request_without_stream_to_is_rejected(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Its answer would reach nobody: a REJECTED dead letter, the endpoint not asked."""
        model = await spawn_model(system, server)
        probe = await TestProbe.spawn(system)
        system.subscribe_dead_letters(probe.ref)
        with trio.fail_after(LIMIT):
            await model.cast(ask("ping"))
            letter = await probe.expect(DeadLetter)
        assert letter.reason is DeadLetterReason.REJECTED
        assert server.received == []


class TestLimits:
    async def test_the_answers_tokens_are_charged_to_the_agents_budget(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Prompt and completion tokens, as the endpoint counted them, streamed or not."""
        budget = TokenBudget(tokens=1_000, per=60.0)
        model = await spawn_model(system, server, admission=[budget])
        probe = await TestProbe.spawn(system)
        with trio.fail_after(LIMIT):
            whole = await model.call(ask("one two"))
            streamed = await model.call(ask("three", stream_to=probe.ref))
        assert (whole.usage.total_tokens, streamed.usage.total_tokens) == (5, 3)
        assert budget.usage(trio.current_time()).used == 8

    async def test_a_429_with_retry_after_delivers_the_call_again_then(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The caller keeps waiting and gets the later attempt's answer; nothing failed."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(429, "slow down", headers={"Retry-After": "0.2"}))
        asked = trio.current_time()
        with trio.fail_after(LIMIT):
            response = await model.call(ask("hi"))
        assert response.text == "echo: hi"
        assert trio.current_time() - asked >= 0.2
        assert len(server.received) == 2
        assert system.delivery.get_stats().failed == 0

    async def test_a_429_with_retry_after_spends_none_of_a_casts_retries(
        self, server: ChatServer
    ) -> None:
        """Even with no retries at all, the cast is delivered again after the wait."""
        async with open_message_system(lenient_config(max_retries=0)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            server.fail_next(Failure(429, "slow down", headers={"retry-after-ms": "100"}))
            with trio.fail_after(LIMIT):
                await model.cast(ask("ping", stream_to=probe.ref))
                chunks = await probe.expect_n(3, ChatChunk)
            assert chunks[-1].response is not None
            assert len(server.received) == 2
            assert system.dead_letters == ()

    async def test_a_429_without_a_wait_holds_for_the_default_then_asks_again(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Rate limited with no time named: held for ``ChatModel.default_retry_after`` (1 s),
        then asked again; the caller gets that answer and nothing failed."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(429, "rate limited", code="rate_limit_exceeded"))
        asked = trio.current_time()
        with trio.fail_after(LIMIT):
            response = await model.call(ask("hi"))
        assert response.text == "echo: hi"
        assert trio.current_time() - asked >= ChatModel.default_retry_after == 1.0
        assert len(server.received) == 2
        assert system.delivery.get_stats().failed == 0

    async def test_a_429_asking_for_more_than_max_retry_after_is_model_unavailable(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """A wait of a day (a daily quota, a misbehaving proxy) would hold every message to
        the agent for a day: the call fails at once with ModelUnavailable (status 429), and
        the next call is answered at once."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(429, "daily quota", headers={"Retry-After": "86400"}))
        with trio.fail_after(LIMIT):
            with pytest.raises(CallFailed) as failed:
                await model.call(ask("first"), timeout=2.0)
            assert (await model.call(ask("second"), timeout=2.0)).text == "echo: second"
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert error.status_code == 429
        assert "max_retry_after" in str(error)
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_cast_asked_to_wait_too_long_is_retried_by_its_guarantee(
        self, server: ChatServer
    ) -> None:
        """The 429 is a failure like a 5xx: the cast's guarantee delivers it again after its
        own backoff, and that answer reaches stream_to."""
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            server.fail_next(Failure(429, "daily quota", headers={"retry-after-ms": "86400000"}))
            with trio.fail_after(LIMIT):
                await model.cast(ask("ping", stream_to=probe.ref))
                chunks = await probe.expect_n(3, ChatChunk)
            assert chunks[-1].response is not None
            assert system.delivery.get_stats().retried == 1

    async def test_a_stream_broken_mid_answer_charges_the_pieces_it_sent(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The endpoint spent tokens on the piece it wrote before failing: one token each is
        charged (its own count never came)."""
        budget = TokenBudget(tokens=1_000, per=60.0)
        model = await spawn_model(system, server, admission=[budget])
        probe = await TestProbe.spawn(system)
        server.fail_next(Failure(500, "the model crashed", mid_stream=True))
        with trio.fail_after(LIMIT), pytest.raises(CallFailed):
            await model.call(ask("one two", stream_to=probe.ref))
        assert budget.usage(trio.current_time()).used == 1

    async def test_a_call_whose_deadline_passed_makes_no_request(self, server: ChatServer) -> None:
        """Its caller has stopped waiting: no request is made, the caller gets CallTimeout,
        and that timeout is the one failure the circuit counts (threshold two: still closed).
        Before, the request failed at once as ModelUnavailable, a second failure."""
        config = lenient_config(breaker=CircuitBreakerConfig(failure_threshold=2))
        async with open_message_system(config) as system:
            model = await system.spawn(Late, base_url=server.base_url, model="tiny")
            probe = await TestProbe.spawn(system)
            system.subscribe_dead_letters(probe.ref)
            with trio.fail_after(LIMIT):
                with pytest.raises(CallTimeout):
                    await model.call(ask("hi"), timeout=0.1)
                letter = await probe.expect(DeadLetter)  # the handler has ended
            assert letter.reason is DeadLetterReason.REJECTED
            assert server.received == []
            assert system.router.stats().circuits[model.id] is CircuitState.CLOSED

    async def test_a_call_whose_deadline_passed_does_not_restart_the_agent(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The request it did not make is the call's failure, not the agent's: it resumes,
        keeping its instance (a fresh one would be late again) and client, and answers the
        next call."""
        model = await system.spawn(Late, base_url=server.base_url, model="tiny")
        probe = await TestProbe.spawn(system)
        system.subscribe_dead_letters(probe.ref)
        with trio.fail_after(LIMIT):
            with pytest.raises(CallTimeout):
                await model.call(ask("hi"), timeout=0.1)
            await probe.expect(DeadLetter)  # the handler has ended
            assert (await model.call(ask("next"), timeout=1.0)).text == "echo: next"
        assert system.get_stats()[0].agent_restarts == 0


class TestFailures:
    async def test_a_5xx_fails_the_call_as_model_unavailable_without_a_restart(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The caller learns the status; the agent keeps its instance; the SDK did not retry."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(503, "overloaded"))
        with trio.fail_after(LIMIT):
            with pytest.raises(CallFailed) as failed:
                await model.call(ask("hi"))
            assert (await model.call(ask("again"))).text == "echo: again"
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert error.status_code == 503
        assert "overloaded" in str(error)
        assert len(server.received) == 2  # one request each: no retry inside the SDK
        assert system.get_stats()[0].agent_restarts == 0

    async def test_a_5xx_counts_against_the_circuit_breaker(self, server: ChatServer) -> None:
        """The failure is the agent's: with a threshold of one, its circuit opens."""
        config = lenient_config(breaker=CircuitBreakerConfig(failure_threshold=1))
        async with open_message_system(config) as system:
            model = await spawn_model(system, server)
            server.fail_next(Failure(500))
            with trio.fail_after(LIMIT), pytest.raises(CallFailed):
                await model.call(ask("hi"))
            assert system.router.stats().circuits[model.id] is CircuitState.OPEN

    async def test_a_rejection_does_not_count_against_the_circuit_breaker(
        self, server: ChatServer
    ) -> None:
        """A request too long for the context is the request's fault, not the endpoint's: with
        a threshold of one the circuit stays closed, and the next request is asked."""
        config = lenient_config(breaker=CircuitBreakerConfig(failure_threshold=1))
        async with open_message_system(config) as system:
            model = await spawn_model(system, server)
            with trio.fail_after(LIMIT):
                with pytest.raises(CallFailed):
                    await model.call(ask("word " * 60))
                assert (await model.call(ask("hi"))).text == "echo: hi"
            assert system.router.stats().circuits.get(model.id) is not CircuitState.OPEN

    async def test_a_failure_keeps_nothing_of_the_sdks_error(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The SDK's error holds the request and its key: it is neither the cause nor the
        context of ours."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(500))
        with trio.fail_after(LIMIT), pytest.raises(CallFailed) as failed:
            await model.call(ask("hi"))
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert SECRET not in repr(error.__context__)
        assert (error.__cause__, error.__context__) == (None, None)

    @pytest.mark.parametrize(
        ("content_type", "body", "said"),
        [
            ("text/html", "<html>the gateway says hello</html>", "could not be read"),
            ("application/json", "<html>the gateway says hello</html>", "could not be read"),
            ("application/json", '{"object": "list", "data": []}', "could not be read"),
            ("application/json", '{"error": {"message": "quota exceeded"}}', "quota exceeded"),
        ],
    )
    async def test_a_200_that_is_not_a_completion_is_model_unavailable(
        self, system: MessageSystem, server: ChatServer, content_type: str, body: str, said: str
    ) -> None:
        """A proxy's page, a wrong base_url's answer, an error sent as a 200: the answer
        could not be read, which is worth another try; the agent keeps its instance."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(200, body=body, content_type=content_type))
        with trio.fail_after(LIMIT):
            with pytest.raises(CallFailed) as failed:
                await model.call(ask("hi"))
            assert (await model.call(ask("again"))).text == "echo: again"
        error = failed.value.__cause__
        assert isinstance(error, ModelUnavailable)
        assert said in str(error)
        assert system.get_stats()[0].agent_restarts == 0

    async def test_token_counts_given_as_null_count_as_none(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """An endpoint that sends ``null`` for its counts still answers: 0 tokens each."""
        model = await spawn_model(system, server)
        completion = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
        }
        server.fail_next(Failure(200, body=json.dumps(completion)))
        with trio.fail_after(LIMIT):
            response = await model.call(ask("hi"))
        assert response == ChatResponse(
            text="hi", usage=ChatUsage(prompt_tokens=0, completion_tokens=0), finish_reason="stop"
        )

    async def test_a_cast_that_meets_a_5xx_is_delivered_again(self, server: ChatServer) -> None:
        """At least once: the next attempt's answer reaches stream_to."""
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            server.fail_next(Failure(500))
            with trio.fail_after(LIMIT):
                await model.cast(ask("ping", stream_to=probe.ref))
                chunks = await probe.expect_n(3, ChatChunk)
            assert chunks[-1].response is not None
            assert len(server.received) == 2
            assert system.delivery.get_stats().retried == 1

    async def test_a_request_too_long_for_the_context_is_rejected_without_a_retry(
        self, server: ChatServer
    ) -> None:
        """A cast becomes a REJECTED dead letter after one request; a call fails with it."""
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server)
            probe = await TestProbe.spawn(system)
            system.subscribe_dead_letters(probe.ref)
            too_long = ask("word " * 60, stream_to=probe.ref)
            with trio.fail_after(LIMIT):
                await model.cast(too_long)
                letter = await probe.expect(DeadLetter)
                with pytest.raises(CallFailed) as failed:
                    await model.call(too_long)
            assert letter.reason is DeadLetterReason.REJECTED
            assert isinstance(failed.value.__cause__, ContextTooLong)
            assert failed.value.__cause__.code == "context_length_exceeded"
            assert len(server.received) == 2

    async def test_another_4xx_is_rejected_as_it_is(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """A refusal that is not about the context (an unknown model) is a ModelRejected."""
        model = await spawn_model(system, server)
        server.fail_next(Failure(404, "no such model", code="model_not_found"))
        with trio.fail_after(LIMIT), pytest.raises(CallFailed) as failed:
            await model.call(ask("hi"))
        error = failed.value.__cause__
        assert type(error) is ModelRejected
        assert (error.status_code, error.code) == (404, "model_not_found")

    async def test_a_request_slower_than_the_agents_timeout_is_model_unavailable(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """A hung endpoint fails the request at the agent's timeout: retryable."""
        model = await spawn_model(system, server, timeout=0.2)
        server.hold_next()
        with trio.fail_after(LIMIT), pytest.raises(CallFailed) as failed:
            await model.call(ask("hi"))
        assert isinstance(failed.value.__cause__, ModelUnavailable)

    async def test_a_request_slower_than_the_callers_deadline_ends_in_call_timeout(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """The caller stops waiting at its deadline; the agent answers the next call."""
        model = await spawn_model(system, server)
        server.hold_next()
        with trio.fail_after(LIMIT):
            with pytest.raises(CallTimeout):
                await model.call(ask("hi"), timeout=0.2)
            server.release()
            assert (await model.call(ask("next"))).text == "echo: next"

    async def test_an_unreachable_endpoint_is_model_unavailable(
        self, system: MessageSystem
    ) -> None:
        """Nothing listening: a connection error, worth trying again later."""
        with ChatServer().running() as gone:
            base_url = gone.base_url
        model = await system.spawn(ChatModel, base_url=base_url, model="tiny")
        with trio.fail_after(LIMIT), pytest.raises(CallFailed) as failed:
            await model.call(ask("hi"))
        assert isinstance(failed.value.__cause__, ModelUnavailable)
        assert failed.value.__cause__.status_code is None


class Sleepy(ChatModel):
    """A ChatModel that says when it has gone to sleep."""

    def __init__(self, asleep: trio.Event, **options: Any) -> None:
        super().__init__(**options)
        self.asleep = asleep

    async def on_hibernate(self) -> None:
        await super().on_hibernate()
        self.asleep.set()


class TestHibernation:
    async def test_a_model_agent_that_slept_answers_when_woken(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """Its client is closed while it sleeps and made again when a call wakes it."""
        asleep = trio.Event()
        model = await system.spawn(
            Sleepy, asleep, base_url=server.base_url, model="tiny", hibernate_after=0.05
        )
        with trio.fail_after(LIMIT):
            await model.call(ask("before"))
            await asleep.wait()
            assert (await model.call(ask("after"))).text == "echo: after"


class TestTheKey:
    async def test_the_key_is_sent_as_a_bearer_token(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        model = await spawn_model(system, server)
        with trio.fail_after(LIMIT):
            await model.call(ask("hi"))
        assert server.received[0].headers["authorization"] == f"Bearer {SECRET}"

    async def test_without_a_key_no_authorization_is_sent(
        self, system: MessageSystem, server: ChatServer
    ) -> None:
        """A local server needs none; no placeholder is sent in its place."""
        model = await system.spawn(ChatModel, base_url=server.base_url, model="tiny")
        with trio.fail_after(LIMIT):
            await model.call(ask("hi"))
        assert "authorization" not in server.received[0].headers

    async def test_the_key_is_in_no_log_repr_or_error(
        self, server: ChatServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Failures of every kind, logged and raised: the key appears nowhere."""
        caplog.set_level(logging.DEBUG)
        seen: list[str] = []
        async with open_message_system(lenient_config(retry_delay=0.05)) as system:
            model = await spawn_model(system, server, timeout=0.2)
            probe = await TestProbe.spawn(system)
            system.subscribe_dead_letters(probe.ref)
            server.hold_next()  # the first request times out
            failures = [None, Failure(500), Failure(401, "bad key", code="invalid_api_key"), None]
            with trio.fail_after(LIMIT):
                for request, failure in zip(
                    [ask("a"), ask("b"), ask("c"), ask("x " * 60)], failures, strict=True
                ):
                    if failure is not None:
                        server.fail_next(failure)
                    with pytest.raises(CallFailed) as failed:
                        await model.call(request)
                    error: BaseException | None = failed.value
                    while error is not None:
                        seen += [str(error), repr(error)]
                        error = error.__cause__ or error.__context__
                await model.cast(ask("word " * 60, stream_to=probe.ref))
                letter = await probe.expect(DeadLetter)
            seen += [repr(letter), repr(model), repr(system.get_stats())]
            with pytest.raises(AgentStartFailed) as refused:
                await system.spawn(ChatModel, base_url="", model="tiny", api_key=SECRET)
            seen += [str(refused.value), repr(refused.value.__cause__)]
        seen += [record.getMessage() for record in caplog.records]
        seen += [caplog.text]
        assert len(server.received) >= 4  # the key went out with each request
        assert not [text for text in seen if SECRET in text]


class TestConfiguration:
    @pytest.mark.parametrize(
        "options",
        [
            {"base_url": "", "model": "m"},
            {"base_url": "http://127.0.0.1:1/v1", "model": 3},
            {"base_url": "http://127.0.0.1:1/v1", "model": "m", "timeout": 0},
            {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": b"sk"},
        ],
    )
    async def test_bad_arguments_fail_the_spawn_with_invalid_config(
        self, system: MessageSystem, options: dict[str, Any]
    ) -> None:
        with pytest.raises(AgentStartFailed) as refused:
            await system.spawn(ChatModel, **options)
        assert isinstance(refused.value.__cause__, InvalidConfig)

    async def test_a_bad_max_retry_after_fails_the_spawn_with_invalid_config(
        self, system: MessageSystem
    ) -> None:
        """A cap on a 429's wait that is not a number of seconds is refused at the start."""

        class Unbounded(ChatModel):
            max_retry_after = -1.0

        with pytest.raises(AgentStartFailed) as refused:
            await system.spawn(Unbounded, base_url="http://127.0.0.1:1/v1", model="m")
        assert isinstance(refused.value.__cause__, InvalidConfig)


def test_importing_the_library_does_not_import_the_sdk() -> None:
    """Only ``terraphim_actors.llm`` needs the ``llm`` extra."""
    code = (
        "import sys, terraphim_actors, terraphim_actors.testing;"
        "assert 'openai' not in sys.modules, 'imported';"
        "import terraphim_actors.llm;"
        "assert 'openai' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
