"""Handler runs of kept messages, counted by the journal before they begin, several at once.

A durable journal counts each run of a message it keeps before its handler begins, so that
runs across crashes never exceed ``max_retries + 1``. Waiting for one commit per run would hold
a busy agent to one message per commit, whatever its senders' commits share. So when a kept
message is about to run uncounted, the next runs of the kept messages waiting behind it in the
agent's mailbox are counted in the same commit (``RUN_BATCH`` at most), and each of those runs
without a commit of its own when its turn comes.

The price: a crash before a message counted ahead has run leaves it charged with a run it did
not have. It comes back with one retry fewer; it never gets more runs than its retries allow.
"""

from __future__ import annotations

from collections.abc import Callable

from .._core.ids import MessageId
from .._core.messages import Envelope
from .._core.protocols import Commit
from .._routing.endpoint import Endpoint
from .ledger import Ledger

__all__ = ["RUN_BATCH", "count_run", "forget_run"]

#: How many handler runs one count commits at most: the message about to run and those
#: waiting behind it. A bound on the retries one crash can cost an agent's waiting messages.
RUN_BATCH = 64


async def count_run(
    ledger: Ledger,
    endpoint: Endpoint,
    envelope: Envelope,
    waiting: Callable[[int], list[Envelope]],
) -> None:
    """Make sure the run of ``envelope`` about to begin at ``endpoint`` is counted: at once if
    it was counted ahead, else with the runs of the kept messages ``waiting(n)`` gives (the
    next ``n`` in the mailbox), in the commits ``ledger.started`` returns, waited for here.

    Raises:
        JournalError: a commit failed: the run is not counted (nor those ahead of it).
    """
    counted = endpoint.runs_counted
    key = envelope.id
    if counted is not None and key in counted:
        counted.remove(key)
        return
    commit = ledger.started(envelope)
    if commit is None:
        return  # not kept
    commits: list[Commit] = [commit]
    ahead: set[MessageId] = set()
    for other in waiting(RUN_BATCH - 1):
        other_key = other.id
        # A second copy of a message (the same id) counts its own run when its turn comes.
        if other_key == key or other_key in ahead or (counted is not None and other_key in counted):
            continue
        other_commit = ledger.started(other)
        if other_commit is not None:
            ahead.add(other_key)
            if other_commit is not commits[-1]:
                commits.append(other_commit)
    for each in commits:
        await each.wait()
    if ahead:
        if endpoint.runs_counted is None:
            endpoint.runs_counted = ahead
        else:
            endpoint.runs_counted |= ahead


def forget_run(endpoint: Endpoint, envelope: Envelope) -> None:
    """``envelope`` was taken out of the mailbox and will not run (expired, a duplicate): a
    run counted ahead for it is spent (a message of the same id sent later counts its own)."""
    counted = endpoint.runs_counted
    if counted is not None:
        counted.discard(envelope.id)
