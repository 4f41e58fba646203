"""Every Python snippet in the README runs, as a reader would run it."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
from chat_server import ChatServer

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_readme_has_snippets() -> None:
    """The README shows code (a broken extraction would pass every snippet test vacuously)."""
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{n}" for n in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The snippet runs to the end without error, its assertions included: on a virtual
    clock, but for a snippet that talks to a real server, whose answers take real time (its
    waits are bounded in the snippet itself): a nats-server, or a model endpoint (the local
    one the tests start, at the URL the snippet reads from ``CHAT_BASE_URL``)."""
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    if "ChatModel" in snippet:
        with ChatServer().running() as server, pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHAT_BASE_URL", server.base_url)
            runpy.run_path(str(script), run_name="__main__")
        assert server.received, "the snippet did not ask the model"
        return
    if "LocalNatsServer" not in snippet:
        request.getfixturevalue("virtual_time")
    runpy.run_path(str(script), run_name="__main__")
