"""A pool of LLM workers behind one ref, with each load-balancing strategy.

``spawn_pool`` starts several instances of an agent under a supervisor of their own and
returns a ref that spreads messages over them:

- ``ROUND_ROBIN``: each member in turn;
- ``RANDOM``: a member drawn at random (``seed=`` makes the draw repeatable);
- ``LEAST_LOADED``: the member with the fewest messages waiting, so a slow request does not
  hold up the ones queued behind it;
- ``CONSISTENT_HASH``: the member a key of the message hashes to, so one user's conversation
  stays with one member (and its cache).
"""

import collections

import trio

from terraphim_actors import Agent, LoadBalancing, open_message_system


class Worker(Agent):
    async def handle_call(self, request, ctx):
        await trio.sleep(request.get("seconds", 0.01))
        return ctx.self.name


async def main() -> None:
    async with open_message_system() as system:
        pool = await system.spawn_pool(Worker, size=3, name="rr")
        answered = [await pool.call({"prompt": n}) for n in range(6)]
        print(f"ROUND_ROBIN: {answered}")

        pool = await system.spawn_pool(
            Worker, size=3, name="random", strategy=LoadBalancing.RANDOM, seed=1
        )
        answered = [await pool.call({"prompt": n}) for n in range(30)]
        print(f"RANDOM: {sorted(collections.Counter(answered).items())}")

        pool = await system.spawn_pool(
            Worker, size=3, name="least", strategy=LoadBalancing.LEAST_LOADED
        )
        answered = []

        async def ask(seconds) -> None:
            answered.append((seconds, await pool.call({"seconds": seconds})))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 1.0)  # a long request keeps one member busy
            await trio.sleep(0.01)
            for _ in range(3):  # meanwhile, three rounds of two quick ones
                async with trio.open_nursery() as round_of_two:
                    round_of_two.start_soon(ask, 0.1)
                    round_of_two.start_soon(ask, 0.1)
        quick = sorted(name for seconds, name in answered if seconds == 0.1)
        slow = [name for seconds, name in answered if seconds == 1.0]
        print(f"LEAST_LOADED: the slow request went to {slow}, the quick ones to {quick}")

        pool = await system.spawn_pool(
            Worker,
            size=3,
            name="sessions",
            strategy=LoadBalancing.CONSISTENT_HASH,
            key=lambda request: request["user"],
        )
        for user in ("ada", "grace", "ada", "alan", "grace", "ada"):
            member = await pool.call({"user": user})
            print(f"CONSISTENT_HASH: {user} -> {member}")


if __name__ == "__main__":
    trio.run(main)
