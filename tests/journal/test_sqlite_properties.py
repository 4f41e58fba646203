"""The journal's promise as a property: whatever was accepted, started and settled, with
commits falling anywhere between, a reopened journal gives back exactly the unsettled messages,
in commit order, each with its runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from stores import AT_LEAST_ONCE, EXACTLY_ONCE, journaled_cast, reopened, running

from terraphim_actors import Envelope
from terraphim_actors._core.settlement import Settlement
from terraphim_actors.journal import SqliteJournal

#: (what, which message): accept it, begin a handler run of it, settle it, or commit.
steps = st.lists(
    st.tuples(
        st.sampled_from(["accept", "accept", "start", "settle", "flush"]),
        st.integers(min_value=0, max_value=9),
        st.sampled_from(list(Settlement)),
    ),
    max_size=40,
)


@given(steps=steps, restart_midway=st.booleans())
def test_a_reopened_journal_holds_exactly_the_unsettled_messages(
    steps: list[tuple[str, int, Settlement]], restart_midway: bool
) -> None:
    envelopes = [
        journaled_cast(number, options=EXACTLY_ONCE if number % 2 else AT_LEAST_ONCE)
        for number in range(10)
    ]
    accepted: list[Envelope] = []  # the model: open messages in commit order
    runs: dict[int, int] = {}

    async def tell(journal: SqliteJournal, part: list[tuple[str, int, Settlement]]) -> None:
        for what, number, outcome in part:
            envelope = envelopes[number]
            if what == "accept" and number not in runs:
                journal.accepted(envelope)
                accepted.append(envelope)
                runs[number] = 0
            elif what == "start" and envelope in accepted:
                journal.started(envelope)
                runs[number] += 1
            elif what == "settle" and envelope in accepted:
                journal.settled(envelope.id, outcome)
                accepted.remove(envelope)
            elif what == "flush":
                await journal.flush()

    async def main(path: Path) -> list[Envelope]:
        # With a restart, the second half is told to a journal opened again on the file.
        parts = [steps[: len(steps) // 2], steps[len(steps) // 2 :]] if restart_midway else [steps]
        for part in parts:
            async with running(SqliteJournal(path)) as journal:
                await tell(journal, part)
        unsettled, _ = await reopened(path)
        return unsettled

    with tempfile.TemporaryDirectory() as directory:
        unsettled = trio.run(
            main, Path(directory) / "agents.db", clock=trio.testing.MockClock(autojump_threshold=0)
        )
    assert [e.id for e in unsettled] == [e.id for e in accepted]
    assert [e.attempt for e in unsettled] == [runs[e.payload] for e in accepted]
