"""The ``system_opened`` hook: an instrument learns of the system it is installed in, built
whole, before any agent starts."""

from __future__ import annotations

from typing import Any

from terraphim_actors import Instrument, MessageSystemConfig, SystemStats, open_message_system


class Opened(Instrument):
    def __init__(self) -> None:
        self.systems: list[Any] = []
        self.stats: list[SystemStats] = []

    def system_opened(self, system: Any) -> None:
        self.systems.append(system)
        self.stats.append(system.get_stats()[0])


async def test_an_instrument_is_told_of_its_system_once() -> None:
    """Told once, with the system the block gets, which can already be read."""
    opened = Opened()
    async with open_message_system(MessageSystemConfig(instruments=[opened])) as system:
        assert opened.systems == [system]
    assert [stats.agents_spawned for stats in opened.stats] == [0]


async def test_each_system_it_is_installed_in_tells_it() -> None:
    """One instrument in two systems hears of both."""
    opened = Opened()
    config = MessageSystemConfig(instruments=[opened])
    async with open_message_system(config) as first, open_message_system(config) as second:
        assert opened.systems == [first, second]
