"""Helpers for the tests against a real nats-server."""

from __future__ import annotations

from typing import Any

from terraphim_actors.cluster import ClusterConfig, LocalNatsServer


def cluster_config(server: LocalNatsServer, node: str = "node-1", **options: Any) -> ClusterConfig:
    """A ``ClusterConfig`` joining ``server`` as ``node`` of the cluster ``test``, with a
    connect timeout short enough for a test."""
    return ClusterConfig(
        servers=[server.url], cluster="test", node=node, **{"connect_timeout": 2.0, **options}
    )
