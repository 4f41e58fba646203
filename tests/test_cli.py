"""The ``terraphim-actors`` command."""

from __future__ import annotations

import pytest

from terraphim_actors.cli import main


@pytest.mark.usefixtures("virtual_time")
class TestDemo:
    def test_demo_runs_and_exits_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`terraphim-actors demo` answers every question, shows the crash, and exits 0."""
        assert main(["demo", "--questions", "3"]) == 0
        out = capsys.readouterr().out
        assert "exited: crashed with ZeroDivisionError" in out
        assert "its supervisor restarted it (1 restart)" in out
        assert "6 / 3 = 2.0" in out
        assert "DOWN calculator: normal" in out
        assert "the calculator failed: ZeroDivisionError" in out
        assert "CallTimeout as expected" in out
        assert "System statistics" in out
        assert "agent crashes      1" in out
        assert "agent restarts     1" in out
        assert "All agents stopped" in out

    def test_demo_answers_every_question_it_is_asked(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--questions`` and ``--seed`` change the run; every question still gets an answer."""
        assert main(["demo", "--questions", "8", "--seed", "3"]) == 0
        out = capsys.readouterr().out
        assert out.count("got an answer to") == 8

    def test_unknown_command_is_an_error(self) -> None:
        """An unknown command exits with argparse's usage error."""
        with pytest.raises(SystemExit) as exit_info:
            main(["dance"])
        assert exit_info.value.code == 2

    def test_zero_questions_is_an_error(self) -> None:
        """``--questions 0`` is refused with a usage error."""
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--questions", "0"])
        assert exit_info.value.code == 2
