"""At-most-once casts to other nodes, gathered into one NATS message per node and round.

A NATS message costs more than the message it carries: the client encodes its headers and
frames it, the receiving client parses it and runs a callback for it, and each crosses the
bridge between asyncio and Trio. At most once, a message needs none of that for itself: no
``Nats-Msg-Id`` (core NATS keeps nothing to deduplicate), no acknowledgement. So the casts a
scheduler round sends to one node leave together, as one body of records in the order they were
sent (:func:`~._msgpack.batch_of`), and the receiving node takes them apart in one decode. The
per-sender order a node promises holds: records keep their order within a batch, and batches to
one subject leave in order.

A batch leaves when the round ends (the sending task yields, and the flushing task runs), or at
once when it reaches :data:`BATCH_BYTES`, so that the bridge's thread sends while Trio keeps
encoding.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._msgpack import BATCH_OVERHEAD, batch_of

__all__ = ["BATCH_BYTES", "CastBatches"]

#: The most bytes of records a batch gathers before it leaves without waiting for the round's
#: end (or the servers' ``max_payload``, when smaller).
BATCH_BYTES = 64 * 1024


class CastBatches:
    """Records waiting to be published, by subject, and the task that publishes them.

    ``publish(subject, body)`` hands one body to NATS (core, at most once). While :meth:`run`
    is not running (before the node starts, after it stopped) a record leaves alone, at once.
    """

    __slots__ = ("_due", "_limit", "_pending", "_publish", "_running", "_sizes")

    def __init__(self, publish: Callable[[str, bytes], None], max_payload: int) -> None:
        self._publish = publish
        self._limit = min(BATCH_BYTES, max_payload) - BATCH_OVERHEAD
        self._pending: dict[str, list[bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._due = trio.Event()
        self._running = False

    def add(self, subject: str, record: bytes) -> None:
        """Send ``record`` (from :func:`~._msgpack.encode_record`) on ``subject`` with the
        others of this round. A record larger than a batch may hold leaves alone."""
        if not self._running:
            self._publish(subject, batch_of([record]))
            return
        records = self._pending.get(subject)
        if records is None:
            self._pending[subject] = [record]
            self._sizes[subject] = len(record)
            self._due.set()
            return
        size = self._sizes[subject] + len(record)
        if size > self._limit:
            self._publish(subject, batch_of(records))
            self._pending[subject] = [record]
            self._sizes[subject] = len(record)
            return
        records.append(record)
        self._sizes[subject] = size

    def flush(self) -> None:
        """Publish every record waiting."""
        pending = self._pending
        if pending:
            self._pending, self._sizes = {}, {}
            for subject, records in pending.items():
                self._publish(subject, batch_of(records))

    async def run(self) -> None:
        """Publish what each round gathered, once it ends; at the end, what is left."""
        self._running = True
        try:
            while True:
                await self._due.wait()
                self._due = trio.Event()
                self.flush()
        finally:
            self._running = False
            self.flush()
