"""The names a cluster uses on NATS: its subjects, its stream and each node's consumer.

Everything of one cluster lives under ``ta.<cluster>.``, so that several clusters (a test's,
a demo's) share one NATS server without hearing each other. Each node listens on subjects
that end in its own name: messages are sent to the node that holds the recipient's name,
which finds the agent by that name.
"""

from __future__ import annotations

import attrs

__all__ = ["Subjects"]


@attrs.frozen
class Subjects:
    """The subjects, stream and consumer names of cluster ``cluster``."""

    cluster: str

    def casts(self, node: str) -> str:
        """Where at-most-once casts and infos for ``node``'s agents are published (core NATS)."""
        return f"ta.{self.cluster}.cast.{node}"

    def queue(self, node: str) -> str:
        """Where at-least-once and exactly-once casts and infos for ``node``'s agents are
        published: a subject of :attr:`stream`, kept until ``node`` acknowledges them."""
        return f"ta.{self.cluster}.queue.{node}"

    def calls(self, node: str) -> str:
        """Where calls to ``node``'s agents are requested (core NATS request/reply)."""
        return f"ta.{self.cluster}.call.{node}"

    def downs(self, node: str) -> str:
        """Where ``node`` announces that one of its named agents stopped for good."""
        return f"ta.{self.cluster}.down.{node}"

    @property
    def all_downs(self) -> str:
        """Every node's announcements of agents stopped for good."""
        return f"ta.{self.cluster}.down.*"

    def stats(self, node: str) -> str:
        """Where ``node`` answers with its delivery books."""
        return f"ta.{self.cluster}.stats.{node}"

    @property
    def all_queues(self) -> str:
        """The subjects :attr:`stream` keeps."""
        return f"ta.{self.cluster}.queue.*"

    @property
    def stream(self) -> str:
        """The JetStream stream holding the cluster's retried messages until acknowledged."""
        return f"TA_{self.cluster}_QUEUE"

    def consumer(self, node: str) -> str:
        """The durable consumer through which ``node`` takes its retried messages."""
        return f"node-{node}"
