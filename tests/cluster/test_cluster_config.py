"""ClusterConfig: what it accepts, what it refuses with InvalidConfig, what its repr hides, and
that the cluster package imports without nats."""

from __future__ import annotations

import ssl
import subprocess
import sys
from typing import Any

import pytest

from terraphim_actors.cluster import ClusterConfig
from terraphim_actors.errors import InvalidConfig

BASE: dict[str, Any] = {"servers": ["nats://127.0.0.1:4222"], "cluster": "research", "node": "n-1"}


def _config(**changes: Any) -> ClusterConfig:
    return ClusterConfig(**{**BASE, **changes})


def test_the_defaults_are_the_documented_ones() -> None:
    config = _config()
    assert config.servers == ("nats://127.0.0.1:4222",)
    assert (config.heartbeat_interval, config.heartbeat_ttl) == (0.5, 2.0)
    assert (config.duplicate_window, config.replicas, config.connect_timeout) == (120.0, 1, 5.0)
    assert (config.user, config.password, config.token, config.creds_file, config.tls) == (
        (None,) * 5
    )


def test_credentials_and_tls_are_kept_as_given() -> None:
    context = ssl.create_default_context()
    config = _config(user="u", password="p", token="t", creds_file="/x.creds", tls=context)
    assert (config.user, config.password, config.token, config.creds_file) == (
        "u",
        "p",
        "t",
        "/x.creds",
    )
    assert config.tls is context


def test_every_field_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ClusterConfig(["nats://127.0.0.1:4222"], "research", "n-1")  # type: ignore[misc]


@pytest.mark.parametrize(
    "servers", [[], "nats://127.0.0.1:4222", [""], [4222], None, b"nats://127.0.0.1"]
)
def test_servers_must_be_a_nonempty_sequence_of_urls(servers: object) -> None:
    with pytest.raises(InvalidConfig, match="server"):
        _config(servers=servers)


@pytest.mark.parametrize("field", ["cluster", "node"])
@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", "a>", "é", 7, None])
def test_cluster_and_node_must_be_subject_and_key_safe_names(field: str, name: object) -> None:
    with pytest.raises(InvalidConfig, match=field):
        _config(**{field: name})


@pytest.mark.parametrize("name", ["planner-1", "Worker_2", "x"])
def test_letters_digits_dashes_and_underscores_make_a_name(name: str) -> None:
    assert _config(node=name, cluster=name).node == name


@pytest.mark.parametrize(
    "field", ["heartbeat_interval", "heartbeat_ttl", "duplicate_window", "connect_timeout"]
)
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_durations_must_be_positive_finite_seconds(field: str, value: object) -> None:
    with pytest.raises(InvalidConfig, match=field):
        _config(**{field: value})


@pytest.mark.parametrize("ttl", [0.5, 0.4])
def test_the_heartbeat_ttl_must_exceed_the_interval(ttl: float) -> None:
    with pytest.raises(InvalidConfig, match="heartbeat_ttl"):
        _config(heartbeat_interval=0.5, heartbeat_ttl=ttl)


@pytest.mark.parametrize("replicas", [0, 6, 1.0, True])
def test_replicas_run_from_one_to_five(replicas: object) -> None:
    with pytest.raises(InvalidConfig, match="replicas"):
        _config(replicas=replicas)


@pytest.mark.parametrize("field", ["user", "password", "token", "creds_file"])
def test_credentials_must_be_strings(field: str) -> None:
    with pytest.raises(InvalidConfig, match=field):
        _config(**{field: b"secret"})


def test_tls_must_be_an_ssl_context() -> None:
    with pytest.raises(InvalidConfig, match="tls"):
        _config(tls=True)


def test_the_repr_hides_the_password_and_token() -> None:
    text = repr(_config(user="alice", password="hunter2", token="s3cr3t-token"))
    assert "hunter2" not in text
    assert "s3cr3t-token" not in text
    assert "password='***'" in text
    assert "token='***'" in text
    assert "user='alice'" in text


def test_importing_the_cluster_package_does_not_import_nats() -> None:
    probe = (
        "import sys, terraphim_actors, terraphim_actors.cluster;"
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
