"""The demo's LLM workers on a real model (``--llm-url``): ChatModel agents that take tasks.

Everything else in the scenario is as without it: the planner, the search tool and its
outages, the aggregator's index failures. What changes is the model's failures: those of a
real endpoint (``terraphim_actors.llm``), which the worker resumes after as it does after the
simulated ones, and whose 429s the delivery layer waits out.
"""

from __future__ import annotations

from typing import Any

from terraphim_actors import AgentRef, Context, Directive
from terraphim_actors.llm import ChatModel, ChatRequest

from .agents import search_sources, told
from .ledger import EventLog, Ledger
from .world import Answer, Endpoint, Task

__all__ = ["ANSWER_TOKENS", "EndpointWorker"]

#: The longest answer a worker asks for, in tokens.
ANSWER_TOKENS = 200
#: Seconds a request may take at most: a real model can be slow, but not slower than the run.
REQUEST_TIMEOUT = 30.0

_INSTRUCTIONS = "You are one step of a research assistant. Answer the task in a few sentences."


class EndpointWorker(ChatModel):
    """Answers a task with the endpoint's model, after a search when the task needs one, and
    casts the answer to the aggregator. A ``ChatModel``: it resumes after the model's errors
    (no restart spent), its ``ModelUnavailable`` failures are delivered again and a request
    too long for the model is rejected at once."""

    def __init__(
        self,
        search: AgentRef,
        aggregator: AgentRef,
        ledger: Ledger,
        events: EventLog,
        endpoint: Endpoint,
        duration: float,
    ) -> None:
        super().__init__(
            base_url=endpoint.url,
            model=endpoint.model,
            api_key=endpoint.api_key,
            timeout=min(REQUEST_TIMEOUT, duration),
        )
        self.search = search
        self.aggregator = aggregator
        self.ledger = ledger
        self.events = events

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        """The default decision (``resume_on``), told as an event and counted for the summary."""
        directive = super().on_error(error, payload, ctx)
        return told(directive, error, payload, ctx, self.ledger, self.events)

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Task):
            return await super().handle_cast(message, ctx)
        sources = (
            await search_sources(self.search, self.ledger, message) if message.needs_search else ()
        )
        prompt = message.prompt + (f"\nSources: {', '.join(sources)}" if sources else "")
        request = ChatRequest(
            messages=[
                {"role": "system", "content": _INSTRUCTIONS},
                {"role": "user", "content": prompt},
            ],
            max_tokens=ANSWER_TOKENS,
        )
        response = await self.complete(request, ctx)
        if response is None:
            return  # the endpoint asked to wait: the task comes again then
        attempt = ctx.envelope.attempt
        answer = Answer(message.id, ctx.self.name or "?", response.text, sources, attempt)
        await self.aggregator.cast(answer)
