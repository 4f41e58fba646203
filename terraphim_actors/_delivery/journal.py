"""The journal nobody keeps: the default, which records nothing and costs nothing.

Delivery tells its journal of each message once when it accepts it and once when it settles
it. With this journal it does not even make those calls: the system gives delivery a plain
``Ledger`` instead of a ``JournalingLedger`` when its journal is :data:`NO_JOURNAL`, so the hot
path pays nothing for the seam.
"""

from __future__ import annotations

import trio

from .._core.ids import MessageId
from .._core.messages import Envelope
from .._core.settlement import Settlement

__all__ = ["NO_JOURNAL", "NoJournal"]


class NoJournal:
    """A ``Journal`` that keeps nothing: after a crash there is nothing to replay."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_JOURNAL"

    def accepted(self, envelope: Envelope) -> None:
        """Keep nothing, so there is no commit to wait for."""

    def started(self, envelope: Envelope) -> None:
        """Count nothing, so there is no commit to wait for."""

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """Keep nothing."""

    def filed(self, envelope: Envelope, reason: str, detail: str) -> None:
        """Keep nothing."""

    async def flush(self) -> None:
        """Nothing is ever pending: return at once."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started and return: there is no file to open and no writer to run, so a
        system that starts it anyway (the integration does not) is left no task to cancel."""
        task_status.started()

    def unsettled(self) -> list[Envelope]:
        """Nothing was kept, so nothing is unsettled."""
        return []

    def completed(self) -> list[tuple[str, MessageId, float]]:
        """Nothing was kept, so no completion is remembered."""
        return []


#: The one ``NoJournal``: delivery skips the journal's calls when it is given this one.
NO_JOURNAL = NoJournal()
