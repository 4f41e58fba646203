"""A circuit breaker in front of a search tool that goes down for a while.

An agent asks the search tool every 0.25 s. The tool is down from 0.5 s to 2.2 s. After 3
failures in a row its circuit opens: calls fail at once with ``CircuitOpen`` instead of
reaching a tool that would fail anyway (and the caller answers without search results). After
the reset timeout (1 s) the circuit is half-open and lets one trial call through: a failure
opens it again, a success closes it.
"""

import logging

import trio

from terraphim_actors import (
    Agent,
    CircuitBreakerConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)
from terraphim_actors.errors import CallFailed, CircuitOpen


class SearchTool(Agent):
    def __init__(self, down_from, down_until):
        self.down_from, self.down_until = down_from, down_until

    async def handle_call(self, query, ctx):
        if self.down_from <= trio.current_time() < self.down_until:
            raise ConnectionError("503 from the search backend")
        return f"results for {query!r}"


async def main() -> None:
    breaker = CircuitBreakerConfig(failure_threshold=3, reset_timeout=1.0)
    config = MessageSystemConfig(router=RouterConfig(circuit_breaker=breaker))
    fail_fast = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)  # no retries
    async with open_message_system(config) as system:
        start = trio.current_time()
        search = await system.spawn(SearchTool, start + 0.5, start + 2.2, name="search")

        def circuit() -> str:
            state = system.router.stats().circuits.get(search.id)  # none yet: closed
            return "closed" if state is None else state.value

        for tick in range(14):
            await trio.sleep_until(start + tick * 0.25)
            before = circuit()
            try:
                outcome = await search.call("trio", options=fail_fast)
            except CircuitOpen:
                outcome = "refused at once"
            except CallFailed as failure:
                outcome = f"failed: {failure.__cause__}"
            elapsed = trio.current_time() - start
            print(f"{elapsed:4.2f} s  circuit {before:>9} -> {circuit():<9}  {outcome}")


if __name__ == "__main__":
    logging.getLogger("terraphim_actors").setLevel(logging.CRITICAL)  # the crashes are planned
    trio.run(main)
