"""The cell's lifecycle as one state machine: the moves its table allows, and no others."""

from __future__ import annotations

import itertools
import re

import pytest

from terraphim_actors._process import lifecycle
from terraphim_actors._process.lifecycle import (
    TRANSITIONS,
    CellState,
    IllegalTransition,
    transition,
)

S = CellState

#: The lifecycle, written out once more by hand: what the cell may do, and nothing else.
ALLOWED = {
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.RESTARTING),
    (S.STARTING, S.STOPPED),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.HIBERNATED),
    (S.HIBERNATED, S.RUNNING),
    (S.HIBERNATED, S.RESTARTING),
    (S.HIBERNATED, S.STOPPED),
    (S.STOPPING, S.RESTARTING),
    (S.STOPPING, S.STOPPED),
    (S.RESTARTING, S.STARTING),
    (S.RESTARTING, S.STOPPED),
}

PAIRS = list(itertools.product(CellState, CellState))


@pytest.mark.parametrize(("current", "to"), [p for p in PAIRS if p in ALLOWED])
def test_an_allowed_move_is_made(current: CellState, to: CellState) -> None:
    assert transition(current, to) is to


@pytest.mark.parametrize(("current", "to"), [p for p in PAIRS if p not in ALLOWED])
def test_any_other_move_is_refused_as_an_internal_error(current: CellState, to: CellState) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.name} to {to.name}"):
        transition(current, to)


def test_nothing_leaves_stopped_and_nothing_moves_to_itself() -> None:
    assert TRANSITIONS[S.STOPPED] == frozenset()
    assert all(state not in TRANSITIONS[state] for state in CellState)


def test_every_state_is_reached_from_a_new_cell() -> None:
    reached, frontier = {S.STARTING}, [S.STARTING]
    while frontier:
        for to in TRANSITIONS[frontier.pop()]:
            if to not in reached:
                reached.add(to)
                frontier.append(to)
    assert reached == set(CellState)


def test_the_docstring_table_is_the_table_the_cell_obeys() -> None:
    """The table people read is the one the code checks: each row naming two states is an
    allowed move, and every allowed move has its row."""
    assert lifecycle.__doc__ is not None
    names = "|".join(state.name for state in CellState)
    rows = re.findall(rf"^({names})\s+({names})\s", lifecycle.__doc__, re.MULTILINE)
    documented = {(S[current], S[to]) for current, to in rows}
    assert documented == ALLOWED
    assert {(c, t) for c, targets in TRANSITIONS.items() for t in targets} == ALLOWED
