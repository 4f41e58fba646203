"""``terraphim-actors demo --llm-url URL --model NAME``: the workers ask a real endpoint, here
the local OpenAI-compatible server of tests/chat_server.py, on the real clock."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from chat_server import ChatServer, Failure

from terraphim_actors.cli import main

SECRET = "sk-demo-0123456789-do-not-print"


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(context_window=10_000).running() as running:
        yield running


def run_demo(server: ChatServer, *options: str) -> int:
    # Short and small: on the real clock, the run lasts until every task is settled.
    base = ["demo", "--llm-url", server.base_url, "--model", "tiny", "--duration", "1.5"]
    return main([*base, "--questions", "2", "--crash-rate", "0", *options])


def test_the_workers_ask_the_endpoint_for_every_task(
    server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every task is answered by the model at the URL, and the run is accounted for."""
    assert run_demo(server) == 0
    out = capsys.readouterr().out
    tasks = re.search(r"accounted for: (\d+) answered, 0 not done", out)
    assert tasks is not None
    assert int(tasks.group(1)) == len(server.received) > 0
    assert {received.body["model"] for received in server.received} == {"tiny"}
    assert "authorization" not in server.received[0].headers


def test_the_key_comes_from_the_named_variable_and_is_never_printed(
    server: ChatServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_MODEL_KEY", SECRET)
    assert run_demo(server, "--api-key-env", "DEMO_MODEL_KEY") == 0
    assert server.received[0].headers["authorization"] == f"Bearer {SECRET}"
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_the_endpoints_failures_are_resumed_after_and_retried(
    server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 503 and a 429 with Retry-After: the tasks are answered all the same."""
    server.fail_next(Failure(503, "overloaded"), Failure(429, headers={"Retry-After": "0.1"}))
    assert run_demo(server) == 0
    out = capsys.readouterr().out
    assert "resumed after ModelUnavailable" in out
    assert re.search(r"accounted for: \d+ answered, 0 not done", out)


@pytest.mark.parametrize(
    "options",
    [
        ["--llm-url", "http://127.0.0.1:1/v1"],
        ["--model", "tiny"],
        ["--llm-url", "http://127.0.0.1:1/v1", "--model", "tiny", "--api-key-env", "NO_SUCH_VAR"],
        ["--llm-url", "http://127.0.0.1:1/v1", "--model", "tiny", "--cluster", "3"],
    ],
)
def test_incomplete_or_conflicting_options_are_a_usage_error(
    options: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *options])
    assert exit_info.value.code == 2
    assert "--" in capsys.readouterr().err
