"""Identities: agent ids that survive renaming, message ids that never repeat."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import threading
import uuid

import attrs
import pytest

from terraphim_actors import AgentId, new_message_id
from terraphim_actors.errors import InvalidConfig


class TestAgentId:
    def test_each_new_id_is_unique(self) -> None:
        """``AgentId()`` makes a fresh id every time."""
        ids = [AgentId() for _ in range(1000)]
        assert len(set(ids)) == 1000

    def test_name_is_attached(self) -> None:
        """A name given at creation is kept; without one it is None."""
        assert AgentId(name="planner").name == "planner"
        assert AgentId().name is None

    def test_equality_is_by_uid_ignoring_the_name(self) -> None:
        """Two ids with the same uid are equal whatever their names."""
        uid = uuid.uuid4()
        assert AgentId(uid, name="old") == AgentId(uid, name="new")
        assert AgentId(uid) == AgentId(uid, name="named")

    def test_same_name_does_not_make_ids_equal(self) -> None:
        """Two fresh ids with one name are two different agents."""
        assert AgentId(name="worker") != AgentId(name="worker")

    def test_ids_are_hashable_by_uid(self) -> None:
        """Equal ids hash alike, so either finds the same dict entry."""
        uid = uuid.uuid4()
        table = {AgentId(uid, name="a"): "agent"}
        assert table[AgentId(uid, name="b")] == "agent"

    def test_repr_shows_the_name(self) -> None:
        """The repr names the agent when it has a name."""
        assert "planner" in repr(AgentId(name="planner"))

    def test_repr_shows_a_short_uid(self) -> None:
        """An unnamed id shows the start of its uid."""
        agent_id = AgentId()
        assert agent_id.uid.hex[:8] in repr(agent_id)

    def test_a_given_uid_is_kept(self) -> None:
        """``AgentId(uid)`` reports the very UUID it was made with."""
        uid = uuid.uuid4()
        assert AgentId(uid, name="planner").uid == uid

    def test_a_fresh_uid_is_a_version_4_uuid(self) -> None:
        """A fresh id's uid is a random UUID as ``uuid.uuid4`` makes them."""
        uid = AgentId().uid
        assert (uid.version, uid.variant) == (4, uuid.RFC_4122)

    def test_an_id_cannot_be_changed(self) -> None:
        """Ids are immutable: they key dicts and travel between agents."""
        agent_id = AgentId(name="planner")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            agent_id.name = "other"

    def test_an_id_survives_pickling_and_copying(self) -> None:
        """A pickled or copied id is equal to the original and keeps its name."""
        agent_id = AgentId(name="planner")
        for twin in (pickle.loads(pickle.dumps(agent_id)), copy.deepcopy(agent_id)):
            assert twin == agent_id
            assert twin.name == "planner"

    def test_a_uid_that_is_not_a_uuid_is_refused(self) -> None:
        """A uid given as a string is a typed error, not an id that equals nothing."""
        with pytest.raises(InvalidConfig, match=r"uuid\.UUID"):
            AgentId("3c6d5aed", name="planner")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "name", [5, [1], 1.5, b"planner"], ids=["int", "list", "float", "bytes"]
    )
    def test_a_name_that_is_not_a_str_is_refused(self, name: object) -> None:
        """As ``spawn(name=...)`` refuses it: an id with an unhashable name would otherwise fail
        in the directory's name lookups, far from the mistake."""
        with pytest.raises(InvalidConfig, match="name"):
            AgentId(name=name)  # type: ignore[arg-type]

    def test_ids_made_in_many_threads_at_once_are_unique(self) -> None:
        """Fresh ids are drawn in batches; threads drawing at once never share one."""
        drawn: list[list[AgentId]] = [[] for _ in range(4)]

        def draw(into: list[AgentId]) -> None:
            into.extend(AgentId() for _ in range(2000))

        threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len({agent_id for ids in drawn for agent_id in ids}) == 8000

    def test_a_forked_child_draws_agent_ids_its_parent_never_does(self) -> None:
        """A forked child does not hand out the rest of its parent's batch of fresh ids
        (forked in a fresh interpreter, which has no other threads)."""
        script = (
            "import os\n"
            "from terraphim_actors import AgentId\n"
            "AgentId()\n"  # the parent has a batch under way when it forks
            "reader, writer = os.pipe()\n"
            "if os.fork() == 0:\n"
            "    os.write(writer, ' '.join(str(AgentId().uid) for _ in range(100)).encode())\n"
            "    os._exit(0)\n"
            "os.close(writer)\n"
            "child = set(os.fdopen(reader).read().split())\n"
            "os.wait()\n"
            "assert len(child) == 100\n"
            "assert not child & {str(AgentId().uid) for _ in range(100)}\n"
        )
        subprocess.run([sys.executable, "-c", script], timeout=60, check=True)


class TestMessageId:
    def test_new_ids_are_unique(self) -> None:
        """``new_message_id()`` never returns the same id twice."""
        ids = [new_message_id() for _ in range(1000)]
        assert len(set(ids)) == 1000

    def test_new_ids_increase(self) -> None:
        """Each new id is larger than the one drawn before it."""
        ids = [new_message_id() for _ in range(100)]
        assert ids == sorted(set(ids))

    def test_message_id_is_a_plain_int(self) -> None:
        """A message id is an ``int``, usable wherever an int key is."""
        message_id = new_message_id()
        assert type(message_id) is int
        assert {int(message_id): "x"}[message_id] == "x"

    def test_ids_from_two_processes_never_collide(self) -> None:
        """Two runs of a process (two incarnations) draw disjoint ids: a restarted process
        never reuses an id that a journal or another node's dedup window may still hold."""
        script = (
            "from terraphim_actors import new_message_id\n"
            "print(*(new_message_id() for _ in range(1000)))\n"
        )
        runs = [
            subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            for _ in range(2)
        ]
        first, second = ({int(word) for word in run.stdout.split()} for run in runs)
        assert len(first) == len(second) == 1000
        assert not first & second
        assert not first & {new_message_id() for _ in range(1000)}

    def test_a_forked_child_draws_ids_its_parent_never_does(self) -> None:
        """A forked child starts an incarnation of its own instead of repeating its parent's
        counter (forked in a fresh interpreter, which has no other threads)."""
        script = (
            "import os\n"
            "from terraphim_actors import new_message_id\n"
            "reader, writer = os.pipe()\n"
            "if os.fork() == 0:\n"
            "    os.write(writer, ' '.join(str(new_message_id()) for _ in range(100)).encode())\n"
            "    os._exit(0)\n"
            "os.close(writer)\n"
            "child = {int(word) for word in os.fdopen(reader).read().split()}\n"
            "os.wait()\n"
            "assert len(child) == 100\n"
            "assert not child & {new_message_id() for _ in range(100)}\n"
        )
        subprocess.run([sys.executable, "-c", script], timeout=60, check=True)
