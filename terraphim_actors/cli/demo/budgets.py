"""The LLM workers' admission budgets: what a provider would allow the pool, set so that a run
shows messages waiting for them without slowing it much."""

from __future__ import annotations

from terraphim_actors import RateLimit, TokenBudget
from terraphim_actors._primitives.admission import Budget

__all__ = ["REQUESTS_PER_SECOND", "TOKENS_PER_SECOND", "model_budgets"]

#: Model requests the pool may make per second, in a run of the default length (10 s).
REQUESTS_PER_SECOND = 8
#: Tokens (prompt and answer) the pool may spend per second, in a run of 10 s.
TOKENS_PER_SECOND = 30_000
#: The run length the rates above are for: a shorter run asks faster, and gets more.
PACE = 10.0


def model_budgets(duration: float) -> list[Budget]:
    """Fresh budgets for the pool of workers of a run lasting ``duration`` seconds (one
    object is one budget)."""
    scale = max(1.0, PACE / duration)
    return [
        RateLimit(requests=round(REQUESTS_PER_SECOND * scale), per=1.0),
        TokenBudget(tokens=round(TOKENS_PER_SECOND * scale), per=1.0),
    ]
