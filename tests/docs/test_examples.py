"""Every program in examples/ runs to the end and prints what it promises."""

from __future__ import annotations

import logging
import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def run_example(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    loggers = [logging.getLogger(package) for package in ("terraphim_actors", "supervisor")]
    levels = [logger.level for logger in loggers]
    try:
        runpy.run_path(str(EXAMPLES[0].parent / name), run_name="__main__")
    finally:  # an example may quiet the runtime's logs; the other tests count on them
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return capsys.readouterr().out


def test_every_example_is_covered() -> None:
    """Each example file has a test below."""
    assert {path.name for path in EXAMPLES} == {
        "quickstart.py",
        "gen_server_counter.py",
        "supervision_tree.py",
        "deferred_replies.py",
        "selective_receive.py",
        "backpressure.py",
        "priorities.py",
        "delivery_guarantees.py",
        "restart_strategies.py",
        "restart_backoff.py",
        "pool_balancing.py",
        "circuit_breaker.py",
        "monitors_and_timers.py",
        "embedding_in_trio_app.py",
        "statistics_and_dead_letters.py",
        "custom_router.py",
    }


@pytest.mark.usefixtures("virtual_time")
def test_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    """The quick start adds 1 + 2 + 3 through casts and reads it back with a call."""
    out = run_example("quickstart.py", capsys)
    assert "counter holds 6" in out
    assert "4 messages processed by 1 agent" in out


@pytest.mark.usefixtures("virtual_time")
def test_gen_server_counter(capsys: pytest.CaptureFixture[str]) -> None:
    """The counter serves calls, casts, a timer, a monitor, a crash and its restart."""
    out = run_example("gen_server_counter.py", capsys)
    lines = out.splitlines()
    assert lines[0] == "watching"
    assert "count = 12" in lines
    assert "timer: reset at 12" in lines
    assert "count after the timer = 0" in lines
    assert "the auditor stopped (normal)" in lines
    assert lines[-2] == "the call failed: ZeroDivisionError('division by zero')"
    assert lines[-1] == "after the restart: alive True, count = 0"


@pytest.mark.usefixtures("virtual_time")
def test_supervision_tree(capsys: pytest.CaptureFixture[str]) -> None:
    """Restarts by strategy, a subtree that gives up and is restarted, then the root gives up."""
    out = run_example("supervision_tree.py", capsys)
    assert "an answer to 'what is a supervisor?'" in out
    step_two = out.split("2. ")[1].split("3. ")[0]
    assert step_two.index("retriever stops: shutdown") < step_two.index("retriever starts")
    assert "research restarts: 2" in out
    assert "root restarts: 2" in out
    assert "ranker ok (the same ref as before)" in out
    assert out.rstrip().splitlines()[-1].startswith("the system ended: root: more than 2")


@pytest.mark.usefixtures("virtual_time")
def test_deferred_replies(capsys: pytest.CaptureFixture[str]) -> None:
    """Deferred calls are answered when their batch runs; a status call is answered meanwhile;
    the answer for a caller that gave up reaches nobody."""
    lines = run_example("deferred_replies.py", capsys).splitlines()
    assert lines[0] == "2 prompts waiting for a batch"
    assert set(lines[1:4]) == {
        "'hello' -> 'HELLO!' after 0.6 s",
        "'bonjour' -> 'BONJOUR!' after 0.6 s",
        "'hola' -> 'HOLA!' after 0.5 s",
    }
    assert lines[4:7] == [
        "a caller in a hurry:",
        "'ciao': gave up after 0.2 s",
        "the answer to 'ciao' reached nobody: its caller had given up",
    ]
    assert set(lines[7:]) == {"'hallo' -> 'HALLO!' after 0.5 s", "'hej' -> 'HEJ!' after 0.5 s"}


@pytest.mark.usefixtures("virtual_time")
def test_selective_receive(capsys: pytest.CaptureFixture[str]) -> None:
    """The urgent result is taken first although it came last; the rest keep their order."""
    assert run_example("selective_receive.py", capsys).splitlines() == [
        "first: urgent fix (by worker-2)",
        "still queued, in arrival order: ['summary', 'translation']",
        "no poem within 1 s: nobody was asked for one",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_backpressure(capsys: pytest.CaptureFixture[str]) -> None:
    """A blocking mailbox of 3 paces the producer to one cast per 0.1 s once it is full;
    a rejecting one refuses at once, and the refused casts are dead letters."""
    out = run_example("backpressure.py", capsys)
    accepted = [float(t) for t in re.findall(r"cast \d accepted at ([\d.]+) s", out)]
    assert accepted == [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4]
    assert "peak queue 3, rejected 0" in out
    # The producer never waits, so the agent takes none out before the mailbox is full
    # (a send that finds room does not yield: the send budget).
    assert out.count("refused: the mailbox is full") == 3
    assert "dead letters: ['mailbox full', 'mailbox full', 'mailbox full']" in out


@pytest.mark.usefixtures("virtual_time")
def test_priorities(capsys: pytest.CaptureFixture[str]) -> None:
    """Once free, the agent handles the waiting messages by priority, FIFO within one."""
    assert run_example("priorities.py", capsys).splitlines() == [
        "handling 'long job' (NORMAL)",
        "handling 'the user cancelled' (CRITICAL)",
        "handling 'the rate limit was raised' (HIGH)",
        "handling 'answer the user' (NORMAL)",
        "handling 'answer the next user' (NORMAL)",
        "handling 'tidy the notes' (LOW)",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_delivery_guarantees(capsys: pytest.CaptureFixture[str]) -> None:
    """At most once loses the crashed message, at least once runs it again, exactly once
    never runs a completed message again."""
    out = run_example("delivery_guarantees.py", capsys)
    assert "  dead letter: order 1 (handler crashed)" in out
    assert "  charged 2 time(s): the handler ran again" in out
    assert "  sent twice, charged 2 time(s): the try that crashed, then one completed run" in out
    assert out.rstrip().splitlines()[-1] == (
        "delivery: 4 sent, 2 acknowledged, 2 retried, 1 duplicates suppressed,"
        " 1 dead-lettered, 0 pending"
    )


@pytest.mark.usefixtures("virtual_time")
def test_restart_strategies(capsys: pytest.CaptureFixture[str]) -> None:
    """Each strategy restarts its own set of agents when the retriever crashes."""
    assert run_example("restart_strategies.py", capsys).splitlines() == [
        "ONE_FOR_ONE: retriever crashes, retriever starts",
        "ONE_FOR_ALL: retriever crashes, ranker is stopped, index is stopped,"
        " index starts, retriever starts, ranker starts",
        "REST_FOR_ONE: retriever crashes, ranker is stopped, retriever starts, ranker starts",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_restart_backoff(capsys: pytest.CaptureFixture[str]) -> None:
    """Restarts wait 0.1, 0.2, 0.4, 0.8 s; the fourth finds the upstream back."""
    lines = run_example("restart_backoff.py", capsys).splitlines()
    assert lines[1:] == [
        "restart 1 at 0.1 s, after waiting 0.1 s: upstream down, crashes again",
        "restart 2 at 0.3 s, after waiting 0.2 s: upstream down, crashes again",
        "restart 3 at 0.7 s, after waiting 0.4 s: upstream down, crashes again",
        "restart 4 at 1.5 s, after waiting 0.8 s: upstream up",
        "an answer to 'are you back?'",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_pool_balancing(capsys: pytest.CaptureFixture[str]) -> None:
    """Round robin takes turns, random spreads, least loaded avoids the busy member,
    consistent hashing keeps a user on one member."""
    out = run_example("pool_balancing.py", capsys)
    assert "ROUND_ROBIN: ['rr-0', 'rr-1', 'rr-2', 'rr-0', 'rr-1', 'rr-2']" in out
    spread = dict(re.findall(r"\('(random-\d)', (\d+)\)", out))
    assert sorted(spread) == ["random-0", "random-1", "random-2"]
    assert sum(map(int, spread.values())) == 30
    assert (
        "LEAST_LOADED: the slow request went to ['least-0'], the quick ones to"
        " ['least-1', 'least-1', 'least-1', 'least-2', 'least-2', 'least-2']"
    ) in out
    by_user: dict[str, set[str]] = {}
    for user, member in re.findall(r"CONSISTENT_HASH: (\w+) -> (sessions-\d)", out):
        by_user.setdefault(user, set()).add(member)
    assert sorted(by_user) == ["ada", "alan", "grace"]
    assert all(len(members) == 1 for members in by_user.values())


@pytest.mark.usefixtures("virtual_time")
def test_circuit_breaker(capsys: pytest.CaptureFixture[str]) -> None:
    """Three failures open the circuit; calls are refused at once; a failed trial reopens it,
    a successful one closes it."""
    lines = run_example("circuit_breaker.py", capsys).splitlines()
    steps = [line.split("  ", 1)[1].split() for line in lines]
    transitions = [(step[1], step[3]) for step in steps]
    assert transitions == [
        ("closed", "closed"),
        ("closed", "closed"),
        ("closed", "closed"),
        ("closed", "closed"),
        ("closed", "open"),
        ("open", "open"),
        ("open", "open"),
        ("open", "open"),
        ("half-open", "open"),
        ("open", "open"),
        ("open", "open"),
        ("open", "open"),
        ("half-open", "closed"),
        ("closed", "closed"),
    ]
    assert sum("refused at once" in line for line in lines) == 6
    assert lines[-1].endswith("results for 'trio'")


@pytest.mark.usefixtures("virtual_time")
def test_monitors_and_timers(capsys: pytest.CaptureFixture[str]) -> None:
    """Down only for a stop for good (or an agent already gone), none after a demonitor;
    a heartbeat that re-arms itself; a cancelled timeout that never fires."""
    assert run_example("monitors_and_timers.py", capsys).splitlines() == [
        "alpha crashed and was restarted (no Down); it answers 'ok'",
        " 0.5 s  heartbeat 1",
        " 1.0 s  heartbeat 2",
        " 1.2 s  Down: alpha (normal)",
        " 1.2 s  Down: beta (noproc)",
        " 1.5 s  heartbeat 3",
        " 1.7 s  job done: the timeout is cancelled",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_embedding_in_trio_app(capsys: pytest.CaptureFixture[str]) -> None:
    """A TCP client's questions reach the agent through the server; then everything stops."""
    assert run_example("embedding_in_trio_app.py", capsys).splitlines() == [
        "the server listens on a free port of 127.0.0.1",
        "client: 'what is an actor?' -> 'answer #1: WHAT IS AN ACTOR?'",
        "client: 'why trio?' -> 'answer #2: WHY TRIO?'",
        "client: 'what is a mailbox?' -> 'answer #3: WHAT IS A MAILBOX?'",
        "the server has stopped; agents still running: 1",
        "the assistant stops (shutdown) after 3 answers",
        "the message system has shut down",
    ]


@pytest.mark.usefixtures("virtual_time")
def test_statistics_and_dead_letters(capsys: pytest.CaptureFixture[str]) -> None:
    """Each lost message reaches the dead-letter office with its reason, and the counters
    balance."""
    out = run_example("statistics_and_dead_letters.py", capsys)
    letters = re.findall(r"^  dead letter: '(.+)' \((.+)\)$", out, re.MULTILINE)
    assert sorted(letters) == sorted(
        [
            ("an info it has no handler for", "unhandled"),
            ("stale request", "expired"),
            ("corrupt.pdf", "handler crashed"),
            ("one report too many", "mailbox full"),
            ("for nobody", "not found"),
            ("waiting report", "agent stopped"),
            ("after the stop", "agent stopped"),
            ("corrupt at every try", "retries exhausted"),
        ]
    )
    assert "messages received 17, dead letters 8" in out
    assert out.rstrip().splitlines()[-1] == (
        "delivery: 18 sent = 10 acknowledged + 0 failed + 0 duplicates + 8 dead-lettered"
        " + 0 pending"
    )


@pytest.mark.usefixtures("virtual_time")
def test_custom_router(capsys: pytest.CaptureFixture[str]) -> None:
    """Tasks go to the pool with their skill, sensitive ones also to the auditor, and a task
    routed nowhere reaches the agent started before its retry."""
    out = run_example("custom_router.py", capsys)
    taken = re.findall(r"^  (\S+) takes '(.+)'$", out, re.MULTILINE)
    assert sorted(taken) == sorted(
        [
            ("coder-0", "fix the parser"),
            ("writer-0", "draft the release notes"),
            ("coder-1", "rotate the API keys"),
            ("auditor", "rotate the API keys"),
            ("translator", "translate the notes"),
        ]
    )
    assert "'translate the notes' waits for retry 1" in out
    assert out.index("waits for retry") < out.index("translator takes")
