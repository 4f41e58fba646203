"""Real nats-servers for the cluster's tests, bound to 127.0.0.1 on free ports, their stores
under pytest's temporary directories.

``nats_server`` is one server for the whole session (started on first use, ~20 ms): tests that
share it must not depend on what others leave behind, so each names its subjects, streams and
consumers after itself. A test that kills, pauses or restarts a server takes ``own_nats_server``,
its own, which is reaped when the test ends whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats_support import cluster_config

from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.cluster._bridge import Bridge


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    """One running nats-server with JetStream, shared by the session."""
    with LocalNatsServer(tmp_path_factory.mktemp("nats-store")) as server:
        yield server


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    """A running nats-server with JetStream for this test alone (to kill, pause, restart)."""
    with LocalNatsServer(tmp_path / "nats-store") as server:
        yield server


@pytest.fixture
async def bridge(nats_server: LocalNatsServer) -> AsyncIterator[Bridge]:
    """A bridge connected to the session's server, closed when the test ends."""
    async with Bridge.connect(cluster_config(nats_server)) as opened:
        yield opened
