"""What a model endpoint's failures become: errors that say whether trying again can help.

The delivery layer decides what happens next from the class alone: a ``ModelUnavailable``
(a 5xx, a timeout, a connection that failed, a 429) is worth delivering again; a
``ModelRejected`` (a request the endpoint refused as it is, such as one too long for the
model's context window) is an ``errors.NonRetryable`` and is never redelivered.

The SDK's own errors are not kept as causes: they hold the HTTP request, whose headers carry
the API key. What matters of them (the status, the endpoint's message, its error code) is
copied into ours.
"""

from __future__ import annotations

import email.utils
import math
import time

import openai

from .._core.bounded_repr import shorten
from ..errors import MessagingError, NonRetryable

__all__ = [
    "ContextTooLong",
    "ModelError",
    "ModelRejected",
    "ModelUnavailable",
    "retry_after_seconds",
    "too_long_to_wait",
    "translate",
]

#: HTTP statuses after which the same request may succeed later (the SDK's own list).
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: Error codes and phrases with which endpoints say that a request is too long for the model.
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = ("context length", "context_length", "context window", "too many tokens")
#: How much of an endpoint's error message our errors quote.
_QUOTED = 300


class ModelError(MessagingError):
    """A model endpoint failed or refused a request.

    ``status_code`` is the HTTP status (None when no response came) and ``code`` the error
    code the endpoint gave, if any.
    """

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class ModelUnavailable(ModelError):
    """The endpoint could not answer now (a 5xx, a 408, 409 or 429, a timeout, a connection
    that failed): the same request may succeed later, so its message is delivered again by its
    guarantee, and the circuit breaker counts the failure."""


class ModelRejected(ModelError, NonRetryable):
    """The endpoint refused the request as it is (a 4xx such as a bad request, a missing or
    wrong key, an unknown model): it would fail the same way again, so it is never
    redelivered, and the circuit breaker does not count it (the endpoint is not at fault)."""


class ContextTooLong(ModelRejected):
    """The request's messages (with room for its answer) do not fit the model's context
    window."""


def translate(error: openai.OpenAIError, *, model: str) -> ModelError:
    """Our error for what the SDK raised for a request to ``model``."""
    if isinstance(error, openai.APITimeoutError):
        return ModelUnavailable(f"{model}: the endpoint did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return ModelUnavailable(f"{model}: could not reach the endpoint ({error.message})")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        code = error.code if isinstance(error.code, str) else None
        said = shorten(_said(error), _QUOTED)
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return ModelUnavailable(
                f"{model}: the endpoint answered {status}: {said}", status_code=status, code=code
            )
        if code in _CONTEXT_CODES or any(phrase in said.lower() for phrase in _CONTEXT_PHRASES):
            return ContextTooLong(
                f"{model}: the request does not fit the model's context window: {said}",
                status_code=status,
                code=code,
            )
        return ModelRejected(
            f"{model}: the endpoint refused the request ({status}): {said}",
            status_code=status,
            code=code,
        )
    return ModelUnavailable(
        f"{model}: the endpoint's answer could not be read ({type(error).__name__})"
    )


def too_long_to_wait(
    error: openai.RateLimitError, *, model: str, wait: float, limit: float
) -> ModelUnavailable:
    """Our error for a 429 that asked for a ``wait`` longer than the agent holds its admission
    for (``limit``): a failure like a 5xx, which the message's guarantee retries and the
    circuit breaker counts, instead of a hold that keeps every message out for that long."""
    unavailable = translate(error, model=model)
    return ModelUnavailable(
        f"{unavailable} (it asked to wait {wait:g} s, longer than max_retry_after, {limit:g} s)",
        status_code=unavailable.status_code,
        code=unavailable.code,
    )


def retry_after_seconds(error: openai.APIStatusError) -> float | None:
    """The wait a 429 asked for (``retry-after-ms``, or ``Retry-After`` in seconds or as an
    HTTP date), or None if it named none that makes sense."""
    headers = error.response.headers
    seconds: float | None = None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        seconds = _number(milliseconds)
        seconds = None if seconds is None else seconds / 1000
    if seconds is None and (value := headers.get("retry-after")) is not None:
        seconds = _number(value)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = max(when.timestamp() - time.time(), 0.0)
    return seconds


def _said(error: openai.APIStatusError) -> str:
    """The endpoint's own message, without the SDK's "Error code: ..." around it."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return error.message


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
