"""Shared test configuration: hypothesis profiles and a running message system.

CI runs the default profile; ``TERRAPHIM_HYPOTHESIS_PROFILE=long uv run pytest`` runs the
property tests with many more examples.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import settings

from terraphim_actors import MessageSystem, open_message_system

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("TERRAPHIM_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
async def system() -> AsyncIterator[MessageSystem]:
    """A running message system, shut down when the test ends."""
    async with open_message_system() as opened:
        yield opened
