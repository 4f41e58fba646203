"""Tools for testing agents: a probe to stand in for an agent, and seeded fault injection.

* :class:`TestProbe`: an agent that records what it receives, with Akka-style expectations
  (``expect``, ``expect_n``, ``fish_for``, ``expect_no_message``, ``expect_terminated``) that
  wait on Trio's clock, so they cost no real time under pytest-trio's ``autojump_clock``.
* :class:`FaultInjector`: handler crashes and stalls (``wrap_agent``), lost and doubled
  envelopes on a route (``router``), and lost, doubled, late or reordered envelopes in front of
  ``send_message`` (``link``); every fault drawn from one seed and counted (:class:`FaultStats`).
* A pytest plugin, ``terraphim_actors.testing.plugin``, loaded automatically once the package
  is installed: the ``message_system``, ``message_system_config`` and ``probe`` fixtures.

Nothing here imports pytest except the plugin, so the probe and the injector work under any
test runner (or none).
"""

from ._errors import ExpectationFailed, InjectedFault
from ._faults import FaultInjector, FaultStats
from ._faulty_route import DROPPED_IN_TRANSIT, FaultyLink, FaultyRouter
from ._probe import ReceivedMessage, TestProbe

__all__ = [
    "DROPPED_IN_TRANSIT",
    "ExpectationFailed",
    "FaultInjector",
    "FaultStats",
    "FaultyLink",
    "FaultyRouter",
    "InjectedFault",
    "ReceivedMessage",
    "TestProbe",
]
