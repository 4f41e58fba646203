"""``ChatModel``: an agent that asks an OpenAI-compatible chat-completions endpoint.

Each instance holds one ``openai.AsyncOpenAI`` client (it runs under Trio through anyio). The
SDK's own retries are off: the delivery layer retries, by the message's guarantee, and the
circuit breaker counts the failures, which it could not do for retries hidden inside the SDK.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

import openai
import trio
from openai.types.chat import ChatCompletionMessageParam

from .._behaviour.agent import Agent, Context, NotHandled
from .._behaviour.refs import AgentRef
from .._core.bounded_repr import shorten
from .._core.checks import MAX_SECONDS, check_instance, check_seconds
from .._core.notifications import ExitReason
from ..errors import (
    AgentNotFound,
    CallTimeout,
    CircuitOpen,
    InvalidConfig,
    MailboxFull,
    NonRetryable,
)
from ._errors import (
    ModelError,
    ModelUnavailable,
    retry_after_seconds,
    too_long_to_wait,
    translate,
)
from ._messages import ChatChunk, ChatRequest, ChatResponse, ChatUsage

__all__ = ["ChatModel"]

#: What a chunk's cast raises, at most once, when its recipient refused it (a full mailbox, an
#: open circuit, no such agent), once the delivery layer has filed the chunk as a dead letter
#: (counted and logged); a retrying guarantee retries it instead. Either way the request the
#: endpoint answered goes on: a slow or gone reader does not fail the answer.
_REFUSED = (MailboxFull, CircuitOpen, AgentNotFound)

#: The data of the event that ends a stream of chunks, after the last one.
_DONE = "[DONE]"

#: What the SDK is given as the key when there is none (a local server); the header that
#: would carry it is left out of every request.
_NO_KEY = "no-key"


class _NoTimeLeft(CallTimeout, NonRetryable):
    """The call in hand's deadline passed before its request was made: no request is made.
    Its caller has stopped waiting (its own ``CallTimeout`` is the failure the circuit breaker
    counts), so this one is not counted again, nor retried."""


class ChatModel(Agent):
    """A chat-completion agent for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM
    Studio): ``system.spawn(ChatModel, base_url=..., model=..., api_key=None)``.

    A call with a :class:`ChatRequest` returns a :class:`ChatResponse`. A request with
    ``stream_to`` is streamed: its answer's pieces are cast there as :class:`ChatChunk` while
    the model writes them (the call still returns the whole answer). A cast of a request with
    ``stream_to`` is answered there only (the last chunk carries the whole answer).

    Each answer's tokens are charged to the agent's budgets (``ctx.charge``); a streamed
    answer cut short charges the pieces it got, one token each (the endpoint's own count comes
    only at the end). A 429 delivers the message again after the wait it names, or after
    :attr:`default_retry_after` if it names none (``ctx.retry_after``: no failure, no retry
    spent; a call's caller keeps waiting); one that names a wait longer than
    :attr:`max_retry_after` is a ``ModelUnavailable``. A call whose deadline has passed makes
    no request and fails with ``CallTimeout``. The endpoint's failures are errors of
    ``terraphim_actors.llm``: ``ModelUnavailable`` (5xx, timeouts) is retried by the
    message's guarantee (a cast's; a call's caller gets it as the cause of ``CallFailed``) and
    counted by the circuit breaker; ``ModelRejected`` (``ContextTooLong`` among them) is never
    retried, nor counted by the breaker (the request was bad, not the endpoint). Neither
    restarts the agent, nor does a request it refuses itself (a cast without ``stream_to``, a
    call past its deadline): see :attr:`resume_on`.

    Args:
        base_url: the API's root, such as ``"https://api.openai.com/v1"`` or
            ``"http://localhost:11434/v1"``.
        model: the model's name at that endpoint.
        api_key: the key, sent as a bearer token; ``None`` sends none (a local server). It is
            kept out of reprs, logs and errors.
        timeout: seconds a request may take at most; a call's request gets no more than its
            caller's deadline leaves.
    """

    #: The agent resumes after the endpoint's failures and after a request it refuses as it
    #: is (``NonRetryable``: a cast without ``stream_to``, a call whose deadline has passed):
    #: each is about one request, not the agent's state, and a restart would only close its
    #: client and spend the supervisor's restart intensity, a few a minute ending the app.
    resume_on: tuple[type[BaseException], ...] = (ModelError, NonRetryable)
    #: Seconds the agent holds its admission after a 429 that names no wait.
    default_retry_after: float = 1.0
    #: The longest wait in seconds a 429 may name for the agent to hold its admission (the
    #: OpenAI SDK, too, honours an endpoint's wait only up to a bound of its own). A longer one
    #: (a daily quota, a misbehaving proxy) would keep every message from the agent, or its
    #: pool, for that long: such a 429 is a ``ModelUnavailable`` instead, retried by the
    #: message's guarantee and counted by the circuit breaker.
    max_retry_after: float = 60.0

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        check_instance("base_url", base_url, str)
        check_instance("model", model, str)
        if not base_url or not model:
            raise InvalidConfig("base_url and model must not be empty")
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidConfig(f"api_key must be a str or None, got a {type(api_key).__name__}")
        check_seconds("timeout", timeout)
        check_seconds("max_retry_after", self.max_retry_after, allow_zero=True)
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self._api_key = api_key
        self._client = self._new_client()
        self._headers: dict[str, str | openai.Omit] = (
            {} if api_key else {"Authorization": openai.Omit()}
        )

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key or _NO_KEY,
            max_retries=0,
            timeout=self.timeout,
        )

    def __repr__(self) -> str:
        return f"<ChatModel {self.model!r} at {self.base_url!r}>"

    async def on_stop(self, reason: ExitReason) -> None:
        await self._client.close()

    async def on_hibernate(self) -> None:
        """Asleep, the agent keeps no connections open: its client is closed, and a new one is
        made when a message wakes it."""
        await self._client.close()

    async def on_wake(self) -> None:
        self._client = self._new_client()

    async def handle_call(self, message: Any, ctx: Context) -> ChatResponse | None:
        if not isinstance(message, ChatRequest):
            raise NotHandled(message)
        return await self.complete(message, ctx)

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, ChatRequest):
            raise NotHandled(message)
        if message.stream_to is None:
            raise NonRetryable("a ChatRequest cast to a ChatModel needs stream_to: its answer")
        await self.complete(message, ctx)

    async def complete(self, request: ChatRequest, ctx: Context) -> ChatResponse | None:
        """Ask the endpoint for ``request`` (streamed to its ``stream_to`` if it has one),
        charge the tokens it cost to the agent's budgets, and return the whole answer: what
        ``handle_call`` does, for a subclass whose handlers take messages of their own. The
        request may take the agent's ``timeout``, and no more than what the deadline of the
        call in hand leaves (a cast's deadline is infinite).

        Returns None when the endpoint answered 429 with a time to wait (at most
        :attr:`max_retry_after`): the message in hand is then delivered again once it has
        passed (``ctx.retry_after``), and the handler should return.

        Raises:
            ModelUnavailable: the endpoint failed, did not answer in time, or asked to wait
                longer than :attr:`max_retry_after`: worth a retry.
            ModelRejected: the endpoint refused the request as it is (``ContextTooLong``).
        """
        left = ctx.deadline - trio.current_time()
        if left <= 0:
            raise _NoTimeLeft(f"{self.model}: the call's deadline passed before its request")
        timeout = min(self.timeout, left)
        failure: ModelError | None = None
        with trio.move_on_after(timeout) as scope:
            try:
                if request.stream_to is None:
                    response = await self._ask(request, timeout)
                    ctx.charge(tokens=response.usage.total_tokens)
                else:
                    response = await self._stream(request, request.stream_to, ctx, timeout)
            except openai.RateLimitError as error:
                wait = retry_after_seconds(error)
                if wait is None or wait <= self.max_retry_after:
                    ctx.retry_after(
                        min(self.default_retry_after if wait is None else wait, MAX_SECONDS)
                    )
                    return None
                failure = too_long_to_wait(
                    error, model=self.model, wait=wait, limit=self.max_retry_after
                )
            except openai.OpenAIError as error:
                # Raised out here, ours would keep the SDK's (and its request's key) as context.
                failure = translate(error, model=self.model)
        if failure is not None:
            raise failure
        if scope.cancelled_caught:
            raise ModelUnavailable(f"{self.model}: no whole answer within {timeout:g} s")
        return response

    async def _ask(self, request: ChatRequest, timeout: float) -> ChatResponse:
        # The raw answer, read by the SDK (whose errors we translate), is read by us: the
        # SDK hands back a 200 that is not JSON as a str, and builds JSON of another shape
        # into a completion whose fields hold anything, None included.
        answer = await self._client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=_as_params(request),
            max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
            stream=False,
            timeout=timeout,
            extra_headers=self._headers,
        )
        return _completion(answer.http_response.content, self.model)

    async def _stream(
        self, request: ChatRequest, stream_to: AgentRef, ctx: Context, timeout: float
    ) -> ChatResponse:
        # The body is read to its end, whatever happens: the HTTP layer reads it through
        # nested async generators, and a consumer that leaves them suspended (the SDK's own
        # stream iterator does so at ``[DONE]``; raising here, or a cancellation at a
        # checkpoint here, would too) makes Trio report each of them as a ResourceWarning.
        # Nothing in the loop checkpoints (pieces go out with ``cast_nowait``), so a
        # cancellation lands in the read and unwinds them; a failure waits for the end.
        message_id = ctx.message_id
        pieces: list[str] = []
        usage = ChatUsage(prompt_tokens=0, completion_tokens=0)
        finish_reason: str | None = None
        done = False
        failure: Exception | None = None
        try:
            async with self._client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=_as_params(request),
                max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
                extra_headers=self._headers,
            ) as answer:
                try:
                    async for line in answer.http_response.aiter_lines():
                        if failure is not None:
                            continue
                        try:
                            data = _data(line)
                            if data is None:
                                continue
                            if data == _DONE:
                                done = True
                                continue
                            text, finished, counted = _event(data, self.model)
                            finish_reason = finished or finish_reason
                            usage = counted or usage
                            if text:
                                with contextlib.suppress(*_REFUSED):
                                    stream_to.cast_nowait(ChatChunk(message_id, len(pieces), text))
                                pieces.append(text)
                        except Exception as error:
                            failure = error
                except Exception as error:
                    # What each line does keeps its errors above, so this is the read that
                    # failed: the connection broke mid-answer. The SDK does not wrap errors
                    # of a body read this way, and its HTTP library (httpx or httpx2, by the
                    # SDK's version) cannot be named here; its error holds the request and
                    # the key, so ours is raised out of this block, with no context.
                    failure = failure or ModelUnavailable(
                        f"{self.model}: the answer broke off ({type(error).__name__})"
                    )
        finally:
            # What the endpoint spent is charged however the stream ended: its count if it
            # came, else one token for each piece (a stream cut short never gets to the count).
            spent = usage.total_tokens or len(pieces)
            if spent:
                ctx.charge(tokens=spent)
        if failure is None and not done and finish_reason is None:
            # The body ended cleanly but the answer did not (a proxy or server that stopped):
            # what came is not the whole answer, and asking again may give it.
            failure = ModelUnavailable(f"{self.model}: the stream ended before the answer did")
        if failure is not None:
            raise failure
        response = ChatResponse(text="".join(pieces), usage=usage, finish_reason=finish_reason)
        with contextlib.suppress(*_REFUSED):
            await stream_to.cast(ChatChunk(message_id, len(pieces), "", response))
        return response


def _completion(body: bytes, model: str) -> ChatResponse:
    """The whole answer a chat completion's JSON ``body`` gives.

    Raises:
        ModelUnavailable: the body is not a chat completion (a proxy's page, the answer of a
            wrong ``base_url``), or reports an error: the answer could not be read.
    """
    try:
        completion = json.loads(body)
    except ValueError:
        completion = None
    if isinstance(completion, dict) and "error" in completion:
        raise ModelUnavailable(f"{model}: the endpoint failed: {_reported(completion)}")
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(completion, dict) or not isinstance(choices, list):
        raise ModelUnavailable(f"{model}: the endpoint's answer could not be read")
    text, finish_reason = _first_choice(choices, "message")
    usage = _usage(completion.get("usage")) or ChatUsage(prompt_tokens=0, completion_tokens=0)
    return ChatResponse(text=text, usage=usage, finish_reason=finish_reason)


def _data(line: str) -> str | None:
    """The data one line of a server-sent event stream carries; None for another line."""
    if not line.startswith("data:"):
        return None
    return line[len("data:") :].strip()


def _event(data: str, model: str) -> tuple[str, str | None, ChatUsage | None]:
    """What the data of one event of a stream of chunks says: the text it adds, the finish
    reason and the usage it gives.

    Raises:
        ModelUnavailable: the endpoint sent an error in the stream, or a chunk it cannot read.
    """
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ModelUnavailable(f"{model}: the endpoint streamed an unreadable chunk") from None
    if not isinstance(chunk, dict):
        raise ModelUnavailable(f"{model}: the endpoint streamed an unreadable chunk")
    if "error" in chunk:
        raise ModelUnavailable(f"{model}: the endpoint failed mid-answer: {_reported(chunk)}")
    text, finish_reason = _first_choice(chunk.get("choices"), "delta")
    return text, finish_reason, _usage(chunk.get("usage"))


def _first_choice(choices: object, part: str) -> tuple[str, str | None]:
    """The text and finish reason of the first of ``choices``, its content under ``part``
    (``"message"`` in a completion, ``"delta"`` in a chunk): empty and None for what is
    missing or of another shape."""
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return "", None
    choice = choices[0]
    content = choice.get(part)
    text = content.get("content") if isinstance(content, dict) else None
    finish_reason = choice.get("finish_reason")
    return (
        text if isinstance(text, str) else "",
        finish_reason if isinstance(finish_reason, str) else None,
    )


def _reported(answer: dict[str, Any]) -> str:
    """What the ``error`` of an answer says, quoted short."""
    error = answer["error"]
    said = error.get("message") if isinstance(error, dict) else error
    return shorten(str(said), 300)


def _usage(usage: object) -> ChatUsage | None:
    """The tokens a ``usage`` object counts (0 for a count it leaves out, or gives as null or
    as something other than a count); None if there is no such object."""
    if not isinstance(usage, dict):
        return None
    return ChatUsage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _as_params(request: ChatRequest) -> list[ChatCompletionMessageParam]:
    # The request checked the shape (role, content and name, all strings) when it was made;
    # which roles the model accepts is the endpoint's to say.
    return [cast(ChatCompletionMessageParam, message) for message in request.messages]
