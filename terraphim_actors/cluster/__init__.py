"""Agents on many processes and hosts, over NATS JetStream.

``MessageSystemConfig(cluster=ClusterConfig(servers=[...], cluster="research", node="planner-1"))``
joins a node to a cluster. nats-py is the ``cluster`` extra; importing this package does not
import it (only a system that joins a cluster does), so a program without a cluster never pays
for it. ``LocalNatsServer`` and ``LocalNatsCluster`` run nats-server on loopback for trying it
on one machine.
"""

from ._server import LocalNatsCluster, LocalNatsServer, find_nats_server
from .config import ClusterConfig

__all__ = ["ClusterConfig", "LocalNatsCluster", "LocalNatsServer", "find_nats_server"]
