"""The pytest plugin: registered through the ``pytest11`` entry point, its fixtures give a test
a running message system and a probe, configured by a marker or by indirect parametrization.

Most tests here run a small test file in a fresh pytest session (``pytester``), as a project
that depends on terraphim-actors would run it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import trio

from terraphim_actors import MessageSystem
from terraphim_actors.testing import TestProbe

pytest_plugins = ["pytester"]

#: A user's project: pytest-trio in trio mode, warnings as errors, markers checked.
INI = """
[pytest]
trio_mode = true
addopts = --strict-markers
filterwarnings = error
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A fresh directory with a user's pytest configuration."""
    pytester.makeini(INI)
    return pytester


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    """Installing the package is enough for pytest to load the plugin."""
    plugins = {point.name: point.value for point in entry_points(group="pytest11")}
    assert plugins["terraphim_actors"] == "terraphim_actors.testing.plugin"


def test_the_fixtures_reach_a_users_tests(project: pytest.Pytester) -> None:
    """A user's test gets a running system and a probe in it without importing the plugin."""
    project.makepyfile(
        """
        from terraphim_actors import MessageSystem
        from terraphim_actors.testing import TestProbe

        async def test_probe(message_system, probe):
            assert isinstance(message_system, MessageSystem)
            assert isinstance(probe, TestProbe)
            await probe.ref.cast("hello")
            assert await probe.expect() == "hello"
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_the_marker_configures_the_system(project: pytest.Pytester) -> None:
    """``@pytest.mark.message_system_config(config)`` opens the system with that config,
    and ``--strict-markers`` knows the marker."""
    project.makepyfile(
        """
        import pytest
        from terraphim_actors import MessageSystemConfig

        CONFIG = MessageSystemConfig(max_restarts=42)

        @pytest.mark.message_system_config(CONFIG)
        async def test_configured(message_system):
            assert message_system.config is CONFIG

        async def test_default(message_system):
            assert message_system.config.max_restarts == 5
        """
    )
    project.runpytest().assert_outcomes(passed=2)


def test_indirect_parametrization_runs_once_per_config(project: pytest.Pytester) -> None:
    """Parametrizing ``message_system`` indirectly runs the test under each configuration."""
    project.makepyfile(
        """
        import pytest
        from terraphim_actors import MessageSystemConfig

        CONFIGS = [MessageSystemConfig(max_restarts=n) for n in (1, 2, 3)]

        @pytest.mark.parametrize("message_system", CONFIGS, indirect=True)
        async def test_each(message_system):
            assert message_system.config in CONFIGS
        """
    )
    project.runpytest().assert_outcomes(passed=3)


def test_a_conftest_can_override_the_default_config(project: pytest.Pytester) -> None:
    """Overriding ``message_system_config`` changes the default for a directory."""
    project.makeconftest(
        """
        import pytest
        from terraphim_actors import MessageSystemConfig

        @pytest.fixture
        def message_system_config():
            return MessageSystemConfig(shutdown_timeout=1.5)
        """
    )
    project.makepyfile(
        """
        async def test_overridden(message_system):
            assert message_system.config.shutdown_timeout == 1.5
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_a_marker_with_the_wrong_arguments_is_a_usage_error(project: pytest.Pytester) -> None:
    """The marker takes exactly one configuration."""
    project.makepyfile(
        """
        import pytest

        @pytest.mark.message_system_config()
        async def test_misused(message_system):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*takes one MessageSystemConfig*"])


def test_the_system_is_shut_down_after_the_test(project: pytest.Pytester) -> None:
    """Agents left running stop when the test ends; what they had not handled is dead-lettered."""
    project.makepyfile(
        """
        import pytest
        from terraphim_actors import Agent

        kept = []

        class Slow(Agent):
            async def on_stop(self, reason):
                kept.append(reason)

        async def test_leaves_an_agent_running(message_system):
            kept.append(message_system)
            await message_system.spawn(Slow)

        def test_it_was_stopped():
            system, reason = kept
            assert system.closing
            assert reason.value == "shutdown"
        """
    )
    project.runpytest().assert_outcomes(passed=2)


def test_autojump_clock_makes_probe_timeouts_free(project: pytest.Pytester) -> None:
    """With ``autojump_clock`` an hour-long quiet period passes at once."""
    project.makepyfile(
        """
        import time
        import trio

        async def test_quiet_hour(probe, autojump_clock):
            started = time.monotonic()
            await probe.expect_no_message(within=3600.0)
            assert trio.current_time() >= 3600.0
            assert time.monotonic() - started < 5.0
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_a_module_importing_the_probe_collects_no_test_class(project: pytest.Pytester) -> None:
    """``TestProbe`` in a test module's namespace is not taken for a test class (no warning,
    which ``filterwarnings = error`` would turn into an error)."""
    project.makepyfile(
        """
        from terraphim_actors.testing import TestProbe

        def test_nothing_else():
            assert TestProbe.__test__ is False
        """
    )
    project.runpytest().assert_outcomes(passed=1, warnings=0)


async def test_the_plugin_fixtures_do_not_clash_with_this_suites_system(
    system: MessageSystem, message_system: MessageSystem, probe: TestProbe
) -> None:
    """This suite's own ``system`` fixture and the plugin's ``message_system`` are two systems;
    the plugin's ``probe`` lives in the plugin's."""
    assert system is not message_system
    assert message_system.whereis(probe.id) == probe.ref
    assert system.whereis(probe.id) is None
    await trio.lowlevel.checkpoint()
