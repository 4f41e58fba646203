"""ClusterDirectory against a real nats-server: names claimed once across nodes, released,
freed when their node leaves or dies, taken back by a restarted node; live nodes seen up and
down."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from terraphim_actors.cluster import ClusterConfig, LocalNatsServer
from terraphim_actors.cluster._bridge import Bridge
from terraphim_actors.cluster._directory import (
    ClusterDirectory,
    DirectoryEvent,
    NameFreed,
    NameTaken,
    NodeDown,
    NodeUp,
    Placement,
    key_name,
    name_key,
)
from terraphim_actors.errors import ClusterError, DuplicateAgent

#: Fast liveness for tests: a node is gone 0.4 s after its last beat.
INTERVAL = 0.1
TTL = 0.4


def _config(server: LocalNatsServer, cluster: str, node: str, **options: Any) -> ClusterConfig:
    settings: dict[str, Any] = {
        "heartbeat_interval": INTERVAL,
        "heartbeat_ttl": TTL,
        "connect_timeout": 2.0,
    }
    settings.update(options)
    return ClusterConfig(servers=[server.url], cluster=cluster, node=node, **settings)


@pytest.fixture
def cluster() -> str:
    """A cluster name of this test's own, so tests sharing the server share no bucket."""
    return f"dir{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def _joined(
    server: LocalNatsServer, cluster: str, node: str, **options: Any
) -> AsyncIterator[ClusterDirectory]:
    """A running directory of ``node``, which leaves cleanly at the end of the block."""
    config = _config(server, cluster, node, **options)
    async with Bridge.connect(config) as bridge, trio.open_nursery() as nursery:
        directory = ClusterDirectory(bridge, config)
        await nursery.start(directory.run)
        yield directory
        nursery.cancel_scope.cancel()


async def _next(
    events: trio.MemoryReceiveChannel[DirectoryEvent], wanted: Callable[[DirectoryEvent], bool]
) -> DirectoryEvent:
    """The next event ``wanted`` accepts (bounded by the caller's ``fail_after``)."""
    async for event in events:
        if wanted(event):
            return event
    raise AssertionError("the directory stopped before the event came")


def _name_taken(name: str) -> Callable[[DirectoryEvent], bool]:
    return lambda event: isinstance(event, NameTaken) and event.name == name


def _name_freed(name: str) -> Callable[[DirectoryEvent], bool]:
    return lambda event: isinstance(event, NameFreed) and event.name == name


def _node_down(node: str) -> Callable[[DirectoryEvent], bool]:
    return lambda event: isinstance(event, NodeDown) and event.node == node


async def _race(
    name: str, *directories: ClusterDirectory
) -> tuple[dict[str, uuid.UUID], list[str]]:
    """Claim ``name`` from every directory at once: the winners' uids by node, the refused."""
    won: dict[str, uuid.UUID] = {}
    refused: list[str] = []

    async def claim(directory: ClusterDirectory) -> None:
        uid = uuid.uuid4()
        try:
            await directory.claim(name, uid)
        except DuplicateAgent:
            refused.append(directory.node)
        else:
            won[directory.node] = uid

    async with trio.open_nursery() as nursery:
        for directory in directories:
            nursery.start_soon(claim, directory)
    return won, refused


#: A node in a process of its own: joins, claims a name, says so, then waits to be killed.
_NODE_PROCESS = textwrap.dedent(
    """
    import sys, uuid, trio
    from terraphim_actors.cluster import ClusterConfig
    from terraphim_actors.cluster._bridge import Bridge
    from terraphim_actors.cluster._directory import ClusterDirectory

    async def main(url, cluster, node, name, ttl):
        config = ClusterConfig(servers=[url], cluster=cluster, node=node,
                               heartbeat_interval=0.1, heartbeat_ttl=float(ttl))
        async with Bridge.connect(config) as bridge, trio.open_nursery() as nursery:
            directory = ClusterDirectory(bridge, config)
            await nursery.start(directory.run)
            uid = uuid.uuid4()
            await directory.claim(name, uid)
            print(directory.incarnation, uid.hex, flush=True)
            await trio.sleep_forever()

    trio.run(main, *sys.argv[1:])
    """
)


@contextlib.asynccontextmanager
async def _node_process(
    server: LocalNatsServer, cluster: str, node: str, name: str, ttl: float = TTL
) -> AsyncIterator[tuple[trio.Process, Placement]]:
    """A node process holding ``name``, and its placement; killed at the end if still up."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _NODE_PROCESS, server.url, cluster, node, name, str(ttl)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            assert chunk, "the node process ended before it claimed its name"
            line += chunk
        incarnation, uid = line.decode().split()
        yield process, Placement(node, uuid.UUID(hex=uid), incarnation)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["planner", "a.b", "a b", "x=41", "=", "", "ünïcødé-名前", "*", ">", "a/b"]
)
def test_every_name_has_a_valid_key_that_gives_the_name_back(name: str) -> None:
    key = name_key(name)
    assert key
    assert all(c.isascii() and (c.isalnum() or c in "-_=") for c in key)
    assert key_name(key) == name


def test_distinct_names_have_distinct_keys() -> None:
    names = ["a.b", "a_b", "a=2Eb", "a=b", "=", "", "A", "a"]
    assert len({name_key(name) for name in names}) == len(names)


# -- claims -----------------------------------------------------------------------------


async def test_a_claimed_name_is_seen_by_another_node(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            events = b.watch()
            await a.claim("planner", uid)
            placement = Placement("a", uid, a.incarnation)
            assert a.lookup("planner") == placement
            assert await _next(events, _name_taken("planner")) == NameTaken("planner", placement)
            assert b.lookup("planner") == placement


async def test_a_name_with_any_characters_can_be_claimed_and_found(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    name = "team.alpha/planner *1* ü"
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            events = b.watch()
            await a.claim(name, uid)
            await _next(events, _name_taken(name))
            assert b.lookup(name) == Placement("a", uid, a.incarnation)
            assert b.lookup("team.alpha/planner *1*") is None


async def test_a_name_present_before_a_node_joins_is_known_once_it_has_started(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            await a.claim("planner", uid)
            async with _joined(nats_server, cluster, "b") as b:
                assert b.lookup("planner") == Placement("a", uid, a.incarnation)
                assert b.live_nodes() == {"a", "b"}


async def test_a_name_taken_on_another_node_cannot_be_claimed(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            await a.claim("planner", uuid.uuid4())
            with pytest.raises(DuplicateAgent, match="planner"):
                await b.claim("planner", uuid.uuid4())


async def test_a_name_held_here_by_one_agent_cannot_be_claimed_for_another(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            first = uuid.uuid4()
            await a.claim("planner", first)
            with pytest.raises(DuplicateAgent):
                await a.claim("planner", uuid.uuid4())
            assert a.lookup("planner") == Placement("a", first, a.incarnation)


async def test_claiming_a_name_again_for_its_agent_succeeds(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            await a.claim("planner", uid)
            await a.claim("planner", uid)
            assert a.lookup("planner") == Placement("a", uid, a.incarnation)


async def test_of_two_concurrent_claims_of_one_name_exactly_one_wins(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            for round_ in range(8):
                name = f"contested-{round_}"
                won, refused = await _race(name, a, b)
                assert len(won) == 1
                assert len(refused) == 1
                [(node, uid)] = won.items()
                winner = a if node == "a" else b
                assert winner.lookup(name) == Placement(node, uid, winner.incarnation)


async def test_a_released_name_is_free_to_claim_elsewhere(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            events = b.watch()
            await a.claim("planner", uid)
            a.release_nowait("planner", uid)
            freed = await _next(events, _name_freed("planner"))
            assert freed == NameFreed("planner", Placement("a", uid, a.incarnation))
            assert b.lookup("planner") is None
            other = uuid.uuid4()
            await b.claim("planner", other)
            assert b.lookup("planner") == Placement("b", other, b.incarnation)


async def test_a_release_for_another_agent_leaves_the_name_held(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            await a.claim("planner", uid)
            a.release_nowait("planner", uuid.uuid4())
            with pytest.raises(DuplicateAgent):
                await b.claim("planner", uuid.uuid4())


async def test_a_name_released_here_can_be_claimed_here_at_once_for_a_new_agent(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            await a.claim("planner", uuid.uuid4())
            a.release_nowait("planner", a.lookup("planner").uid)  # type: ignore[union-attr]
            successor = uuid.uuid4()
            await a.claim("planner", successor)
            assert a.lookup("planner") == Placement("a", successor, a.incarnation)


async def test_a_name_released_and_claimed_again_here_for_its_agent_stays_held(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    uid = uuid.uuid4()
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "a") as a,
            _joined(nats_server, cluster, "b") as b,
        ):
            await a.claim("planner", uid)
            a.release_nowait("planner", uid)
            await a.claim("planner", uid)
            with pytest.raises(DuplicateAgent):
                await b.claim("planner", uuid.uuid4())
            assert a.lookup("planner") == Placement("a", uid, a.incarnation)


async def test_of_two_concurrent_claims_of_one_name_on_one_node_exactly_one_wins(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            won, refused = await _race("planner", a, a)
            assert len(won) == 1
            assert refused == ["a"]
            assert a.lookup("planner") == Placement("a", won["a"], a.incarnation)


# -- nodes ------------------------------------------------------------------------------


async def test_a_node_that_joins_is_seen_up(nats_server: LocalNatsServer, cluster: str) -> None:
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            events = a.watch()
            assert a.live_nodes() == {"a"}
            async with _joined(nats_server, cluster, "b") as b:
                up = await _next(events, lambda event: isinstance(event, NodeUp))
                assert up == NodeUp("b", b.incarnation)
                assert a.node_alive("b")


async def test_watching_ends_when_the_directory_stops(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "a") as a:
            events = a.watch()
        _ = [event async for event in events]  # what came before the end
        with pytest.raises(trio.EndOfChannel):
            await events.receive()


async def test_a_clean_leave_frees_the_nodes_names_at_once(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    # A TTL far beyond the wait: only the leave itself can free the name in time.
    with trio.fail_after(3):
        async with _joined(nats_server, cluster, "b", heartbeat_ttl=30.0) as b:
            events = b.watch()
            async with _joined(nats_server, cluster, "a", heartbeat_ttl=30.0) as a:
                incarnation = a.incarnation
                placement = Placement("a", uuid.uuid4(), incarnation)
                await a.claim("planner", placement.uid)
                await _next(events, _name_taken("planner"))
            seen: set[DirectoryEvent] = set()
            while len(seen) < 2:  # the two buckets' watchers keep no order between them
                event = await _next(events, lambda e: isinstance(e, NameFreed | NodeDown))
                seen.add(event)
            assert seen == {NameFreed("planner", placement), NodeDown("a", incarnation)}
            assert not b.node_alive("a")
            await b.claim("planner", uuid.uuid4())


async def test_a_killed_node_is_down_within_twice_the_ttl_and_its_names_are_free(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with (
            _joined(nats_server, cluster, "b") as b,
            _node_process(nats_server, cluster, "a", "planner") as (process, placement),
        ):
            events = b.watch()
            while b.lookup("planner") != placement:
                await events.receive()
            os.kill(process.pid, signal.SIGKILL)
            killed_at = trio.current_time()
            down = await _next(events, _node_down("a"))
            assert trio.current_time() - killed_at < 2 * TTL
            assert down == NodeDown("a", placement.incarnation)
            assert b.lookup("planner") is None
            uid = uuid.uuid4()
            await b.claim("planner", uid)
            assert b.lookup("planner") == Placement("b", uid, b.incarnation)


async def test_a_restarted_node_takes_its_names_back_at_once(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    # A TTL far beyond the test: the old heartbeat is still there when the node comes back.
    ttl = 30.0
    with trio.fail_after(10):
        async with _joined(nats_server, cluster, "b", heartbeat_ttl=ttl) as b:
            events = b.watch()
            async with _node_process(nats_server, cluster, "a", "planner", ttl) as (
                process,
                old,
            ):
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()
            async with _joined(nats_server, cluster, "a", heartbeat_ttl=ttl) as a:
                uid = uuid.uuid4()
                await a.claim("planner", uid)
                new = Placement("a", uid, a.incarnation)
                assert await _next(
                    events, lambda event: isinstance(event, NodeDown | NodeUp)
                ) == NodeUp("a", old.incarnation)
                assert await _next(events, _node_down("a")) == NodeDown("a", old.incarnation)
                assert await _next(events, lambda e: isinstance(e, NodeUp)) == NodeUp(
                    "a", a.incarnation
                )
                while b.lookup("planner") != new:
                    await events.receive()


# -- faults -----------------------------------------------------------------------------


async def test_after_the_server_restarts_the_directory_follows_again(
    own_nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with (
            _joined(own_nats_server, cluster, "a") as a,
            _joined(own_nats_server, cluster, "b") as b,
        ):
            events = b.watch()
            before = uuid.uuid4()
            await a.claim("before", before)
            own_nats_server.kill()
            own_nats_server.restart()
            after = uuid.uuid4()
            await a.claim("after", after)
            while b.lookup("after") is None:
                await events.receive()
            assert b.lookup("after") == Placement("a", after, a.incarnation)
            assert b.lookup("before") == Placement("a", before, a.incarnation)


async def test_a_claim_fails_with_cluster_error_when_the_server_is_gone(
    own_nats_server: LocalNatsServer, cluster: str
) -> None:
    with trio.fail_after(10):
        async with _joined(own_nats_server, cluster, "a", connect_timeout=0.5) as a:
            own_nats_server.stop()
            started = trio.current_time()
            with pytest.raises(ClusterError):
                await a.claim("planner", uuid.uuid4())
            assert trio.current_time() - started < 1.5


async def test_run_fails_with_cluster_error_when_the_server_is_gone(
    own_nats_server: LocalNatsServer, cluster: str
) -> None:
    config = _config(own_nats_server, cluster, "a", connect_timeout=0.5)
    with trio.fail_after(10):
        async with Bridge.connect(config) as bridge:
            own_nats_server.stop()
            directory = ClusterDirectory(bridge, config)
            started = trio.current_time()
            with pytest.raises(ClusterError):
                await directory.run()
            assert trio.current_time() - started < 1.5


async def test_a_claim_before_the_directory_runs_is_refused(
    nats_server: LocalNatsServer, cluster: str
) -> None:
    config = _config(nats_server, cluster, "a")
    with trio.fail_after(10):
        async with Bridge.connect(config) as bridge:
            with pytest.raises(ClusterError, match="not running"):
                await ClusterDirectory(bridge, config).claim("planner", uuid.uuid4())
