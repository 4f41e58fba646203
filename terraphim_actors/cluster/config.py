"""``ClusterConfig``: where the NATS servers are, which cluster and node this is, and the timing
of the cluster's liveness and deduplication.

The names end up inside NATS subjects, stream and consumer names and key-value keys, so they
are held to what all of those accept (ASCII letters, digits, ``-`` and ``_``): a dot would split
a subject token and a wildcard would widen it, silently. Credentials are passed through to the
client untouched and never shown in a repr, which ends up in logs.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_instance, check_seconds, validator
from ..errors import InvalidConfig

if TYPE_CHECKING:
    from ._node import ClusterNode

__all__ = ["ClusterConfig"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_HIDDEN = "'***'"


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidConfig(
            f"servers must be a sequence of server URLs such as ['nats://127.0.0.1:4222'],"
            f" got {bounded_repr(value)}"
        )
    servers = tuple(value)
    if not servers:
        raise InvalidConfig("servers must name at least one server")
    for server in servers:
        if not isinstance(server, str) or not server.strip():
            raise InvalidConfig(
                f"each server must be a non-empty URL string, got {bounded_repr(server)}"
            )
    return servers


def _check_name(_instance: object, field: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidConfig(
            f"{field.name} must be a non-empty name of ASCII letters, digits, '-' and '_'"
            f" (it is used in NATS subjects and key-value keys), got {bounded_repr(value)}"
        )


def _check_optional_str(
    _instance: object, field: attrs.Attribute[str | None], value: object
) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidConfig(f"{field.name} must be a str or None, got a {type(value).__name__}")


def _secret_repr(value: str | None) -> str:
    return "None" if value is None else _HIDDEN


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """How this node joins a cluster over NATS JetStream.

    ``servers``: the NATS server URLs (any one is enough to join; the client learns the rest
    and fails over among them). ``cluster``: the cluster's name, which prefixes every subject,
    stream and bucket, so several clusters can share one NATS. ``node``: this process's name,
    unique in the cluster; a process started again under the same name takes back its agents'
    names at once.

    ``user`` and ``password``, ``token``, ``creds_file`` (a NATS credentials file) and ``tls``
    are handed to the NATS client as they are. ``heartbeat_interval`` is how often this node
    says it is alive, ``heartbeat_ttl`` how long after its last beat it counts as gone (more
    than the interval). ``duplicate_window`` is how long JetStream remembers a message id to
    drop a republished copy; ``replicas`` (1 to 5) how many servers keep each stream (3
    against a 3-server NATS cluster); ``connect_timeout`` bounds the first connection and each
    JetStream request that has no deadline of its own (setting up streams, consumers and
    buckets, which a replicated stream answers only once its servers have a leader).
    """

    servers: Sequence[str] = attrs.field(converter=_servers)
    cluster: str = attrs.field(validator=_check_name)
    node: str = attrs.field(validator=_check_name)
    user: str | None = attrs.field(default=None, validator=_check_optional_str)
    password: str | None = attrs.field(
        default=None, validator=_check_optional_str, repr=_secret_repr
    )
    token: str | None = attrs.field(default=None, validator=_check_optional_str, repr=_secret_repr)
    creds_file: str | None = attrs.field(default=None, validator=_check_optional_str)
    tls: ssl.SSLContext | None = attrs.field(
        default=None, validator=validator(check_instance, ssl.SSLContext, optional=True)
    )
    heartbeat_interval: float = attrs.field(default=0.5, validator=validator(check_seconds))
    heartbeat_ttl: float = attrs.field(default=2.0, validator=validator(check_seconds))
    duplicate_window: float = attrs.field(default=120.0, validator=validator(check_seconds))
    replicas: int = attrs.field(default=1, validator=validator(check_count, minimum=1, maximum=5))
    connect_timeout: float = attrs.field(default=5.0, validator=validator(check_seconds))

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise InvalidConfig(
                f"heartbeat_ttl ({self.heartbeat_ttl:g} s) must be longer than"
                f" heartbeat_interval ({self.heartbeat_interval:g} s), or a live node would"
                " count as gone between two beats"
            )

    def join(self) -> ClusterNode:
        """This node's membership, for one system (``MessageSystemConfig(cluster=...)`` calls
        it): nats-py is imported here, not before."""
        from ._node import ClusterNode

        return ClusterNode(self)
