"""``terraphim-actors demo --cluster 3``: a planner node and two worker nodes over a local
nats-server, one worker node killed with SIGKILL mid-run, every task accounted for. Real
processes and real time (a few seconds each); every wait is bounded, and what a test starts is
killed if it leaves early."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
import trio

from terraphim_actors.cli import main
from terraphim_actors.cli.demo.cluster import ClusterAccount, ClusterSettings, cluster_summary

#: The demo ends in about 5 s; this bounds a run that hangs.
RUN_BOUND = 90.0
DEMO = [str(Path(sysconfig.get_path("scripts")) / "terraphim-actors"), "demo", "--cluster", "3"]


def test_a_worker_node_killed_mid_run_loses_no_task() -> None:
    """The command exits 0; the killed node's ``Down`` reaches the planner, which sends that
    worker's unfinished tasks to the other node; every task planned has its result."""
    run = subprocess.run(
        [*DEMO, "--tasks", "8"], capture_output=True, text=True, timeout=RUN_BOUND, check=False
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(r"SIGKILL to worker-node-2 \(pid \d+\) after worker-2 handled", out), out
    assert "planner-node got Down(worker-2, noconnection)" in out
    again = re.search(r"sent worker-2's (\d+) unfinished tasks? again \((\d+) to worker-1", out)
    assert again is not None, out
    assert int(again[1]) == int(again[2]) > 0
    assert "  worker-node-2   its books died with it (SIGKILL)" in out
    assert re.search(
        r"^  cluster +sent \d+ = .*\(live nodes: planner-node, worker-node-1\)$", out, re.M
    )
    assert "does not balance" not in out
    every = re.search(
        r"^Every task is accounted for across the nodes: (\d+) handled \((\d+) on worker-node-1,"
        r" (\d+) on worker-node-2\), none lost\.$",
        out,
        re.M,
    )
    assert every is not None, out
    total, first, second = map(int, every.groups())
    assert total == first + second == 8


async def test_ctrl_c_stops_every_node_and_the_server() -> None:
    """A SIGINT mid-run ends the demo with exit code 130, and none of the processes it started
    (nats-server and the three nodes) still runs."""
    process = await trio.lowlevel.open_process(
        DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=_hear_sigint,
    )
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(RUN_BOUND):
            async for chunk in process.stdout:
                seen += chunk
                if b"planner-node sent" in seen:
                    break
            # Read from /proc, not from what the demo printed: on a loaded machine a worker
            # node may not have said it joined (with its pid) before the planner's first sends.
            started = _children(process.pid)
            process.send_signal(signal.SIGINT)
            async for chunk in process.stdout:
                seen += chunk
            assert await process.wait() == 130, seen.decode()
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
    assert len(started) == 4, seen.decode()  # the server and three nodes
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _hear_sigint() -> None:
    """Let the demo take SIGINT as Ctrl+C: a shell without job control starts a background
    job (pytest too, then) with SIGINT ignored, which its children would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_task_whose_result_never_came_is_reported_lost() -> None:
    """The account names a task planned whose result never reached the planner, and does not
    count it as accounted for."""
    account = ClusterAccount(
        tasks=["t1", "t2", "t3", "t4"],
        sent={"t1": "worker-1", "t2": "worker-2", "t3": "worker-1", "t4": "worker-2"},
        results={"t1": "worker-1", "t2": "worker-2", "t3": "worker-1"},
    )
    assert account.lost == ["t4"]
    assert not account.accounted_for
    assert cluster_summary(account, ClusterSettings(tasks=4))[-1] == "Lost across the nodes: t4."


def test_a_task_handled_on_two_nodes_is_shown_as_handled_more_than_once() -> None:
    """A task whose result died with its node, handled again on another, counts once among
    the results and is named as handled more than once (at least once, not exactly once)."""
    account = ClusterAccount(
        tasks=["t1", "t2"],
        sent={"t1": "worker-1", "t2": "worker-2"},
        resent={"t2": "worker-1"},
        handled={"worker-2": ["t2"], "worker-1": ["t1", "t2"]},
        results={"t1": "worker-1", "t2": "worker-1"},
    )
    lines = cluster_summary(account, ClusterSettings(tasks=2))
    assert "  at least once   handled more than once: t2 (worker-2, worker-1)" in lines
    assert lines[-1] == (
        "Every task is accounted for across the nodes: 2 handled (2 on worker-node-1,"
        " 0 on worker-node-2), none lost."
    )


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--cluster", "2"], "--cluster must be from 3"),
        (["--cluster", "3", "--tasks", "3"], "--tasks must be at least 2 for each worker node"),
        (["--cluster", "3", "--journal", "x.db"], "cannot be used together"),
    ],
)
def test_a_cluster_too_small_or_short_of_tasks_is_a_usage_error(
    arguments: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["demo", *arguments])
    assert exit_code.value.code == 2
    assert complaint in capsys.readouterr().err


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` now (from ``/proc``)."""
    children = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:  # it ended meanwhile
            continue
        if re.search(rf"^PPid:\s+{pid}$", text, re.MULTILINE):
            children.add(int(status.parent.name))
    return children
