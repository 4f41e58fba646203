"""The seams between the layers, as ``typing.Protocol``\\ s.

A lower layer that must name something a higher layer provides names one of these instead of
importing it, so that every import runs downward. Each protocol has today's implementation
behind it, named in its docstring.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .notifications import ExitReason

__all__ = ["Behaviour", "CallServer", "Instance"]

_Cell_contra = TypeVar("_Cell_contra", contravariant=True)


class CallServer(Protocol):
    """The handler serving a call, as the call's reply slot knows it: told when the caller
    gives up, so that it can cut short work nobody waits for.

    Today's implementation: ``_behaviour.gen_server.GenServer``.
    """

    def call_abandoned(self, handle: Any) -> None: ...


class Instance(Protocol):
    """One running instance of a behaviour, as the cell that runs it sees it: the cell knows
    when it runs and how it ends, never what it does with a message.

    Today's implementation: ``_behaviour.gen_server.GenServer`` (an ``Agent`` instance served
    as OTP's gen_server serves its callback module).
    """

    async def run(self) -> ExitReason:
        """Serve until asked to stop (returns why) or crashed (returns the error)."""
        ...

    def settle(self, reason: ExitReason) -> None:
        """The instance has ended with ``reason``: settle what it left its peers (replies it
        promised), before its cleanup runs."""
        ...

    #: The instance's own cleanup (``on_stop``), which the cell runs within the agent's
    #: shutdown time; None if it has none (the cell then spends no cancel scope on it).
    cleanup: Callable[[ExitReason], Awaitable[None]] | None

    def format_message(self, payload: Any) -> str:
        """``payload`` as the instance wants it logged and quoted."""
        ...


class Behaviour(Protocol[_Cell_contra]):
    """What a cell runs, once per instance: OTP's behaviour module to the cell's proc_lib.

    Today's implementation: ``_behaviour.gen_server.GenServerBehaviour``.
    """

    async def start(self, cell: _Cell_contra) -> Instance:
        """Build a fresh instance and run its start (``on_start``).

        Raises:
            AgentStartFailed: building it or its start raised.
        """
        ...
