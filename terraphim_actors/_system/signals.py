"""SIGINT and SIGTERM as requests to shut a message system down (``handle_signals=True``).

Without them, Trio turns SIGINT into a ``KeyboardInterrupt`` raised wherever the program happens
to be, and SIGTERM (what docker and systemd send) ends the process with no ``on_stop`` run at
all. With them, a signal takes the path a cancellation from outside takes: the block's body is
cancelled, and its exit stops every agent in order, each within its shutdown time. A second
signal is the operator saying "now": the shutdown is cut short as its deadline would cut it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import TYPE_CHECKING

import trio

from ..errors import InvalidConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractContextManager

    from .system import MessageSystem

__all__ = ["SHUTDOWN_SIGNALS", "ShutdownSignals", "check_main_thread", "receiving_signals"]

logger = logging.getLogger("terraphim_actors")

#: The signals that ask for a shutdown: Ctrl+C, and what service managers send.
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_main_thread() -> None:
    """Refuse ``handle_signals`` outside the main thread, where Python cannot catch signals,
    before anything is started (Trio would refuse later, with a less useful message)."""
    if threading.current_thread() is not threading.main_thread():
        raise InvalidConfig(
            "handle_signals=True works only in the main thread (Python delivers signals there"
            " only); in another thread, leave it False and cancel the block to shut down"
        )


def receiving_signals(enabled: bool) -> AbstractContextManager[AsyncIterator[int] | None]:
    """Catch SIGINT and SIGTERM for the length of the block, if ``enabled`` (else yield None).

    Signals that come while nobody reads them are delivered again, the usual way, once the
    block is left: Trio's receiver loses none.
    """
    if not enabled:
        return contextlib.nullcontext()
    return trio.open_signal_receiver(*SHUTDOWN_SIGNALS)


class ShutdownSignals:
    """What SIGINT and SIGTERM have done to one system: the first cancels ``body`` (the block's
    body, whose exit is the graceful shutdown), the second cuts the shutdown short.

    Both are logged at WARNING, so that Python's default logging shows them: whoever pressed
    Ctrl+C learns that the program heard it, and how to make it hurry.
    """

    def __init__(self, system: MessageSystem, body: trio.CancelScope) -> None:
        self._system = system
        self._body = body
        self._received: list[signal.Signals] = []

    @property
    def interrupted(self) -> bool:
        """Whether a SIGINT came: leaving the block then raises ``KeyboardInterrupt``."""
        return signal.SIGINT in self._received

    async def serve(self, receiver: AsyncIterator[int]) -> None:
        """Act on each signal ``receiver`` yields, until cancelled."""
        async for number in receiver:
            self.received(signal.Signals(number))

    def received(self, signum: signal.Signals) -> None:
        """Act on one signal: the first starts the shutdown, the second cuts it short."""
        self._received.append(signum)
        if len(self._received) == 1:
            self._system.shutdown_signal = signum
            logger.warning(
                "%s received: shutting the message system down (a second SIGINT or SIGTERM"
                " cuts the shutdown short)",
                signum.name,
            )
            self._body.cancel()
        elif len(self._received) == 2:
            logger.warning("%s received during the shutdown: cutting it short", signum.name)
            self._system.cut_shutdown_short(f"cut short by a second signal ({signum.name})")
