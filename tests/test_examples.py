"""Every program in examples/ runs to the end and prints what it promises."""

from __future__ import annotations

import logging
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


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
