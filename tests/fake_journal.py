"""A journal kept in memory, for delivery's rules without SQLite: it follows the journal
contract (what is kept, commits to wait on, settlements, dead letters, replay) with rows in a
dict, and commits that are trio Events a test releases by hand when it holds them."""

from __future__ import annotations

from typing import Any

import trio

from terraphim_actors import Envelope, MessageId
from terraphim_actors._core.codec import encode
from terraphim_actors._core.settlement import Settlement
from terraphim_actors._delivery.durability import journaled
from terraphim_actors.errors import JournalError


class FakeCommit:
    """One commit: done when released, failed when released with an error."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._error: JournalError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def release(self, error: JournalError | None = None) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


class FakeJournal:
    """Keeps the journaled messages in a dict; ``hold`` keeps each commit open until
    :meth:`release`; ``events`` lists what it was told, in order, as (event, message id)."""

    def __init__(
        self,
        *,
        hold: bool = False,
        unsettled: list[Envelope] | None = None,
        completed: list[tuple[str, MessageId, float]] | None = None,
        open_error: JournalError | None = None,
        accept_error: JournalError | None = None,
    ) -> None:
        self.hold = hold
        #: Every commit of an accept fails with it (a full disk when messages are written).
        self.accept_error = accept_error
        self.rows: dict[MessageId, Envelope] = {}
        self.runs: dict[MessageId, int] = {}
        self.settlements: list[tuple[MessageId, Settlement]] = []
        self.filings: list[tuple[MessageId, str, str]] = []
        self.events: list[tuple[str, Any]] = []
        self.commits: list[FakeCommit] = []
        self._unsettled = list(unsettled or [])
        self._completed = list(completed or [])
        self._open_error = open_error
        for envelope in self._unsettled:
            self.rows[envelope.id] = envelope
            self.runs[envelope.id] = envelope.attempt
        self.running = False

    def _commit(self) -> FakeCommit:
        commit = FakeCommit()
        if self.hold:
            self.commits.append(commit)
        else:
            commit.release()
        return commit

    def release(self, error: JournalError | None = None) -> None:
        """Complete every commit held so far (failed with ``error`` if given)."""
        commits, self.commits = self.commits, []
        for commit in commits:
            commit.release(error)

    def accepted(self, envelope: Envelope) -> FakeCommit | None:
        if not journaled(envelope):
            return None
        encode(envelope)  # what the real one stores: refuses what it cannot encode
        self.rows[envelope.id] = envelope
        self.runs.setdefault(envelope.id, 0)
        self.events.append(("accepted", envelope.id))
        if self.accept_error is not None:
            failed = FakeCommit()
            failed.release(self.accept_error)
            return failed
        return self._commit()

    def started(self, envelope: Envelope) -> FakeCommit | None:
        if envelope.id not in self.rows:
            return None
        self.runs[envelope.id] += 1
        self.events.append(("started", envelope.id))
        return self._commit()

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        if self.rows.pop(message_id, None) is not None:
            self.settlements.append((message_id, outcome))
            self.events.append(("settled", message_id))

    def filed(self, envelope: Envelope, reason: str, detail: str) -> None:
        self.filings.append((envelope.id, reason, detail))
        self.events.append(("filed", envelope.id))

    async def flush(self) -> None:
        await self._commit().wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self._open_error is not None:
            raise self._open_error
        self.events.append(("run", None))
        self.running = True
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.running = False
            self.events.append(("stopped", None))

    def unsettled(self) -> list[Envelope]:
        return list(self._unsettled)

    def completed(self) -> list[tuple[str, MessageId, float]]:
        return list(self._completed)
