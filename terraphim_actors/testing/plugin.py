"""The pytest plugin of terraphim-actors: a running message system and a probe as fixtures.

Installed with the package and registered through the ``pytest11`` entry point, so a project
that depends on terraphim-actors gets these fixtures without importing anything:

* ``message_system``: an open :class:`~terraphim_actors.MessageSystem`, shut down (every agent
  stopped, every unhandled message dead-lettered) when the test ends;
* ``message_system_config``: the configuration it opens with; ``None`` (the defaults) unless
  the test carries ``@pytest.mark.message_system_config(MessageSystemConfig(...))``. Override
  this fixture in a ``conftest.py`` to change the default for a directory. A test parametrized
  indirectly (``@pytest.mark.parametrize("message_system", [config, ...], indirect=True)``)
  runs once per configuration;
* ``probe``: a :class:`~terraphim_actors.testing.TestProbe` spawned in ``message_system``.

The fixtures are async: they need pytest-trio, with ``trio_mode = true`` or tests marked
``@pytest.mark.trio``.

**Time.** Ask for pytest-trio's ``autojump_clock`` fixture in any test that waits: call
timeouts, retry backoffs, circuit reset timeouts, ``probe.expect(..., timeout=...)`` and
``probe.expect_no_message(within=...)`` then run on a ``MockClock`` that jumps ahead whenever
every task is blocked, so they take no real time and never race the machine's load. Without it
they wait for real. ``trio.testing.wait_all_tasks_blocked()`` lets everything that can run, run,
when a test needs a quiet point without moving the clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from terraphim_actors import MessageSystem, MessageSystemConfig, open_message_system
from terraphim_actors.testing import TestProbe

__all__ = ["message_system", "message_system_config", "probe", "pytest_configure"]

#: The marker that gives ``message_system`` its configuration.
CONFIG_MARKER = "message_system_config"


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's marker, so that ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{CONFIG_MARKER}(config): the MessageSystemConfig that the message_system fixture"
        " of terraphim-actors opens with",
    )


@pytest.fixture
def message_system_config(request: pytest.FixtureRequest) -> MessageSystemConfig | None:
    """The configuration of ``message_system``: the ``message_system_config`` marker's
    argument, or ``None`` for the defaults. Override it in a conftest to change the default."""
    marker = request.node.get_closest_marker(CONFIG_MARKER)
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        raise pytest.UsageError(
            f"@pytest.mark.{CONFIG_MARKER} takes one MessageSystemConfig, got {marker!r}"
        )
    config: MessageSystemConfig = marker.args[0]
    return config


@pytest.fixture
async def message_system(
    request: pytest.FixtureRequest, message_system_config: MessageSystemConfig | None
) -> AsyncIterator[MessageSystem]:
    """A running message system for the test, shut down when it ends.

    Its configuration comes from indirect parametrization if the test has it, else from
    ``message_system_config``. Request ``autojump_clock`` too, so that its timeouts and
    backoffs take no real time.
    """
    config = getattr(request, "param", message_system_config)
    async with open_message_system(config) as system:
        yield system


@pytest.fixture
async def probe(message_system: MessageSystem) -> TestProbe:
    """A ``TestProbe`` in ``message_system``: pass ``probe.ref`` to the agents under test and
    assert with ``await probe.expect(...)``. Its expectations wait on Trio's clock: with
    ``autojump_clock`` a timeout costs no real time."""
    return await TestProbe.spawn(message_system)
