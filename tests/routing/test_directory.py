"""The registry: names, agents by id, and the ids that stopped for good lately."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from terraphim_actors import AgentId
from terraphim_actors._routing.directory import _STOPPED_KEPT, LocalDirectory
from terraphim_actors.errors import DuplicateAgent, InvalidConfig


def fake_cell(agent_id: AgentId) -> Any:
    """A stand-in for an agent cell: the registry only reads its id."""
    return SimpleNamespace(id=agent_id)


def test_a_claimed_name_resolves_to_its_id() -> None:
    """After ``claim``, the name stands for the id it was given."""
    registry = LocalDirectory()
    agent_id = registry.claim("planner")
    assert registry.resolve("planner") == agent_id
    assert agent_id.name == "planner"


def test_an_id_resolves_to_itself_and_an_unknown_name_to_none() -> None:
    """An ``AgentId`` is its own address; a name nobody claimed resolves to nothing."""
    registry = LocalDirectory()
    agent_id = AgentId()
    assert registry.resolve(agent_id) is agent_id
    assert registry.resolve("nobody") is None


def test_a_name_can_be_claimed_once() -> None:
    """Claiming a taken name raises ``DuplicateAgent``."""
    registry = LocalDirectory()
    registry.claim("planner")
    with pytest.raises(DuplicateAgent):
        registry.claim("planner")


def test_a_name_must_be_a_string() -> None:
    """A name that is not a str raises ``InvalidConfig``."""
    with pytest.raises(InvalidConfig):
        LocalDirectory().claim(42)  # type: ignore[arg-type]


def test_removing_an_agent_frees_its_name_and_marks_it_stopped() -> None:
    """An agent removed for good leaves its name free and its id known as stopped."""
    registry = LocalDirectory()
    cell = fake_cell(registry.claim("worker"))
    registry.add(cell)
    registry.remove(cell)
    assert registry.resolve("worker") is None
    assert registry.has_stopped(cell.id)
    assert cell.id not in registry.cells


def test_an_id_running_again_is_no_longer_stopped() -> None:
    """When an agent registers again under a stopped id, that id is not stopped any more."""
    registry = LocalDirectory()
    cell = fake_cell(registry.claim("worker"))
    registry.add(cell)
    registry.remove(cell)
    again = fake_cell(registry.claim("worker", cell.id))
    registry.add(again)
    assert not registry.has_stopped(cell.id)
    assert registry.cells[cell.id] is again


def test_the_memory_of_stopped_ids_is_bounded() -> None:
    """Only the most recent stopped ids are remembered, so the memory stays bounded."""
    registry = LocalDirectory()
    first = AgentId()
    registry.release(first)
    for _ in range(_STOPPED_KEPT):
        registry.release(AgentId())
    assert not registry.has_stopped(first)
