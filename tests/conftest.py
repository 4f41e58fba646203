"""Shared test configuration: hypothesis profiles and a running message system.

CI runs the default profile; ``TERRAPHIM_HYPOTHESIS_PROFILE=long uv run pytest`` runs the
property tests with many more examples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from agents import AT_MOST_ONCE
from hypothesis import settings

from terraphim_actors import MessageSystem, open_message_system

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("TERRAPHIM_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
async def system(request: pytest.FixtureRequest) -> AsyncIterator[MessageSystem]:
    """A running message system, shut down when the test ends; at most once under the
    ``at_most_once`` marker, at least once (the default) otherwise."""
    config = AT_MOST_ONCE if request.node.get_closest_marker("at_most_once") else None
    async with open_message_system(config) as opened:
        yield opened


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``trio.run`` in the test run on a ``MockClock`` that jumps when idle.

    For programs that call ``trio.run`` themselves (examples, README snippets, the CLI):
    their sleeps and timeouts then take no real time and never race the machine's load.
    """
    real_run = trio.run

    def run_on_mock_clock(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("clock", trio.testing.MockClock(autojump_threshold=0))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(trio, "run", run_on_mock_clock)


@pytest.fixture
def quiet_crash_logs() -> Iterator[None]:
    """For tests that crash agents by the thousand on purpose: log none of the tracebacks."""
    loggers = [logging.getLogger(name) for name in ("terraphim_actors", "supervisor")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
