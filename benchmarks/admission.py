"""What an admission check costs per message: the same casts (1 -> 1) to an agent with no
admission budget, and with each budget alone (a ``RateLimit``, a ``TokenBudget``, a
``ConcurrencyLimit``) set so high that it never refuses, beside the bare-channel floor, in one
run.

No message waits: what is measured is the check itself (a message past an endpoint's gate:
the slow send path, the budget's ``admit``, and its release when the handler ends), which a
message to an agent without budgets never pays. Each side is reported as a rate, its ratio to
the floor, and its cost relative to casts without a budget: time per message with the budget
over time per message without (1.00 means the check is free); the microseconds it adds to a
message are printed.

    uv run python benchmarks/admission.py [--quick] [--runs R] [--messages N]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from _harness import Options, Report, run_trio, settle
from _workloads import Counter, Tally, agent_casts, floor_casts, timed_casts

from terraphim_actors import ConcurrencyLimit, RateLimit, TokenBudget, open_message_system
from terraphim_actors._primitives.admission import Budget

#: Budgets large enough never to refuse a message of a run.
NEVER = 10**12


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--messages", full=50_000, quick=2_000, help="casts per run")
    return choice


async def budgeted_casts(messages: int, budget: Callable[[], Budget]) -> float:
    """Seconds until one agent spawned with ``budget()`` has handled ``messages`` casts
    (``cast_nowait``); start and shutdown are not timed."""
    tally = Tally(messages)
    async with open_message_system() as system:
        ref = await system.spawn(Counter, tally, admission=[budget()])
        await settle()
        elapsed = await timed_casts([ref.cast_nowait], tally, 1, 1)
    return elapsed


#: The budgeted sides: their labels and how each makes its budget.
BUDGETS: dict[str, tuple[str, Callable[[], Budget]]] = {
    "rate": ("casts, RateLimit", lambda: RateLimit(requests=NEVER, per=60.0)),
    "tokens": ("casts, TokenBudget", lambda: TokenBudget(tokens=NEVER, per=60.0)),
    "concurrency": ("casts, ConcurrencyLimit", lambda: ConcurrencyLimit(NEVER)),
}
SIDES = {
    "floor": "floor (memory channel)",
    "none": "casts, no budget",
    **{side: label for side, (label, _) in BUDGETS.items()},
}


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    count = arguments.messages
    report = Report("admission", arguments, {"messages": count})
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(arguments.runs):  # each run measures every side, so that drift hits all
        rates["floor"].append(count / run_trio(floor_casts, count, 1, 1, 1))
        rates["none"].append(count / run_trio(agent_casts, count, 1, 1, 1))
        for side, (_, budget) in BUDGETS.items():
            rates[side].append(count / run_trio(budgeted_casts, count, budget))
    summaries = {
        side: report.measure(side, label, "casts/s", rates[side]) for side, label in SIDES.items()
    }
    floor, unbudgeted = summaries["floor"].median, summaries["none"].median
    report.ratio("none_ratio_to_floor", unbudgeted / floor)
    notes = []
    for side in BUDGETS:
        budgeted = summaries[side].median
        report.ratio(f"{side}_ratio_to_floor", budgeted / floor)
        report.ratio(f"{side}_cost_ratio_to_no_budget", unbudgeted / budgeted)
        added = (1 / budgeted - 1 / unbudgeted) * 1e6
        report.extra(f"{side}_added_us_per_message", added)
        notes.append(f"{SIDES[side]}: {added:+.2f} µs a message")
    report.print(f"admission checks, {count:_} casts 1 -> 1", notes)


if __name__ == "__main__":
    main()
