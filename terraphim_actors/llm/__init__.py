"""A model client agent: chat completions from any OpenAI-compatible endpoint, as an agent.

``system.spawn(ChatModel, base_url=..., model=..., api_key=None)``, then
``await ref.call(ChatRequest(messages=[{"role": "user", "content": "..."}]))`` returns a
``ChatResponse``. The endpoint's limits and failures meet the delivery layer: token usage is
charged to the agent's budgets, a 429 with ``Retry-After`` delivers the message again then,
5xx and timeouts are retried by the message's guarantee and counted by the circuit breaker,
and a request too long for the model's context window is rejected without a retry.

It needs the ``llm`` extra (the official ``openai`` SDK, which runs under Trio through anyio):
``pip install terraphim-actors[llm]``. Importing ``terraphim_actors`` does not import it.
"""

from ._errors import ContextTooLong, ModelError, ModelRejected, ModelUnavailable
from ._messages import ChatChunk, ChatRequest, ChatResponse, ChatUsage
from ._model import ChatModel

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "ChatUsage",
    "ContextTooLong",
    "ModelError",
    "ModelRejected",
    "ModelUnavailable",
]
