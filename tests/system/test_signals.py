"""SIGINT and SIGTERM shut a system down gracefully (``handle_signals=True``), a second signal
cuts the shutdown short.

First with real signals sent to a real process (``signal_app.py``) whose four agents are busy
in a 60 s model call: the only tests of the suite that take real time, as a shutdown does for
docker or systemd, a few seconds each. Every wait is bounded, and the process is killed if a
test fails. Then in this process, on the virtual clock, the signal raised by the test itself.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from guarded import run_in_own_thread

from terraphim_actors import (
    Agent,
    Context,
    MessageSystem,
    MessageSystemConfig,
    StopReason,
    open_message_system,
)
from terraphim_actors.errors import InvalidConfig

APP = Path(__file__).resolve().parents[1] / "signal_app.py"
#: Wall-clock seconds the program may take to start and get its agents busy.
START_SECONDS = 20.0
#: Seconds a process may take beyond the shutdown's own time: the second that ``on_stop``
#: may get once cut short, and the machine's noise.
SLACK = 1.5


class App:
    """``signal_app.py`` running in a process of its own, its output read line by line."""

    def __init__(self, mode: str, shutdown_timeout: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(APP), mode, str(shutdown_timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._unread: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._unread.put(line.rstrip("\n"))
        self._unread.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        """Read output until a line contains ``text``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._unread.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {timeout} s: {self.lines}")
            if line is None:
                pytest.fail(f"the program ended without a line with {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return

    def signal(self, signum: signal.Signals) -> float:
        """Send ``signum``; returns when it was sent (``time.monotonic``)."""
        self.process.send_signal(signum)
        return time.monotonic()

    def exit(self, timeout: float) -> tuple[int, float]:
        """Wait for the process to end, within ``timeout`` seconds: its exit status, and when
        it ended (``time.monotonic``). Its output is in :attr:`lines` then."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout} s later: {self.lines}")
        ended = time.monotonic()
        while (line := self._unread.get(timeout=5.0)) is not None:
            self.lines.append(line)
        return status, ended

    def count(self, text: str) -> int:
        return sum(line == text for line in self.lines)

    def close(self) -> None:
        """Kill the process if it still runs, and close its output."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5.0)
        self._reader.join(5.0)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def start() -> Iterator[type[App]]:
    """Start ``App``s that are killed at the end of the test if still running."""
    started: list[App] = []

    class Started(App):
        def __init__(self, mode: str, shutdown_timeout: float) -> None:
            super().__init__(mode, shutdown_timeout)
            started.append(self)

    yield Started
    for app in started:
        app.close()


def test_sigterm_stops_every_busy_pool_worker_within_the_shutdown_time(
    start: type[App],
) -> None:
    """The issue's case: four pool workers in a hung model call, one SIGTERM; the members
    stop together, so the process ends within one shutdown time (plus slack), every
    ``on_stop`` run, and the block is left normally: exit status 0."""
    app = start("pool", 1.0)
    app.wait_for("ready", START_SECONDS)
    sent = app.signal(signal.SIGTERM)
    status, ended = app.exit(1.0 + SLACK + 3.0)
    assert status == 0, app.lines
    assert app.count("on_stop killed") == 4, app.lines
    assert "left the block after SIGTERM" in app.lines
    assert ended - sent < 1.0 + SLACK, app.lines


def test_sigterm_says_which_signal_started_the_shutdown(start: type[App]) -> None:
    """The log names the signal, and how to cut the shutdown short."""
    app = start("agents", 0.1)
    app.wait_for("ready", START_SECONDS)
    app.signal(signal.SIGTERM)
    app.exit(4 * 0.1 + SLACK + 3.0)
    assert (
        "WARNING SIGTERM received: shutting the message system down (a second SIGINT or"
        " SIGTERM cuts the shutdown short)" in app.lines
    )


def test_sigint_stops_every_agent_then_ends_the_program_as_ctrl_c_does(
    start: type[App],
) -> None:
    """Four busy agents under the root, each with 0.25 s to stop (one after another): the
    process ends within their shutdown times, every ``on_stop`` run, and leaving the block
    raises ``KeyboardInterrupt``, so Python ends the process by SIGINT, as after Ctrl+C."""
    app = start("agents", 0.25)
    app.wait_for("ready", START_SECONDS)
    sent = app.signal(signal.SIGINT)
    status, ended = app.exit(4 * 0.25 + SLACK + 3.0)
    assert status == -signal.SIGINT, app.lines
    assert app.count("on_stop killed") == 4, app.lines
    assert "KeyboardInterrupt" in app.lines, app.lines
    assert not any(line.startswith("left the block") for line in app.lines)
    assert ended - sent < 4 * 0.25 + SLACK, app.lines


def test_a_second_signal_cuts_a_long_shutdown_short(start: type[App]) -> None:
    """Agents that would get 30 s each to stop: a second signal during the shutdown cancels
    them all at once, every ``on_stop`` still runs, and the process ends within a second or
    so."""
    app = start("agents", 30.0)
    app.wait_for("ready", START_SECONDS)
    app.signal(signal.SIGTERM)
    app.wait_for("message system shutting down: stopping 4 agents", 5.0)
    sent = app.signal(signal.SIGTERM)
    status, ended = app.exit(SLACK + 3.0)
    assert status == 0, app.lines
    assert app.count("on_stop killed") == 4, app.lines
    assert "WARNING SIGTERM received during the shutdown: cutting it short" in app.lines
    assert ended - sent < SLACK, app.lines


def test_handle_signals_outside_the_main_thread_is_refused() -> None:
    """Python catches signals in the main thread only: asked for elsewhere, the block is
    refused at once, with a typed error that says why."""

    async def open_with_signals() -> None:
        async with open_message_system(handle_signals=True):
            pass  # pragma: no cover - refused on entry

    with pytest.raises(InvalidConfig, match="only in the main thread"):
        run_in_own_thread(lambda: trio.run(open_with_signals))


def test_handle_signals_must_be_a_bool() -> None:
    """A truthy string is a mistake, not a yes."""

    async def open_with(value: Any) -> None:
        async with open_message_system(handle_signals=value):
            pass  # pragma: no cover - refused on entry

    with pytest.raises(InvalidConfig, match="handle_signals"):
        trio.run(open_with, "yes")


# -- in this process, on the virtual clock --------------------------------------------------


@pytest.fixture
def signals_never_reach_pytest() -> Iterator[list[int]]:
    """While the test runs, SIGINT and SIGTERM that the system does not catch are recorded here
    instead of ending the test run (and Trio does not install its Ctrl+C handler)."""
    stray: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda number, frame: stray.append(number))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    yield stray
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class Busy(Agent):
    """Takes a cast and stays in its handler for a minute; records why it stopped."""

    def __init__(self, stops: list[StopReason]) -> None:
        self.stops = stops

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        await trio.sleep(60)

    async def on_stop(self, reason: StopReason) -> None:
        self.stops.append(reason)


class SlowToStop(Agent):
    """Its ``on_stop`` would take 20 s; records when it ended, done or cut short."""

    def __init__(self, ended: list[float]) -> None:
        self.ended = ended

    async def on_stop(self, reason: StopReason) -> None:
        try:
            await trio.sleep(20)
        finally:
            self.ended.append(trio.current_time())


class SignalsInItsStop(Agent):
    """Raises ``signal`` as it starts to stop, then takes 3 s to clean up."""

    def __init__(self, stops: list[StopReason], signum: signal.Signals) -> None:
        self.stops = stops
        self.signum = signum

    async def on_stop(self, reason: StopReason) -> None:
        signal.raise_signal(self.signum)
        await trio.sleep(3)
        self.stops.append(reason)


CONFIG = MessageSystemConfig(shutdown_timeout=5.0)


async def serve_busy_until(signum: signal.Signals, stops: list[StopReason]) -> MessageSystem:
    """Open a system with ``handle_signals``, make an agent busy, raise ``signum``, and serve
    until it ends the block; returns the system if leaving the block raised nothing."""
    async with open_message_system(CONFIG, handle_signals=True) as system:
        await (await system.spawn(Busy, stops)).cast("question")
        await trio.testing.wait_all_tasks_blocked()
        signal.raise_signal(signum)
        await trio.sleep_forever()
    return system


async def fail_with_an_agent_that_signals(stops: list[StopReason]) -> None:
    """Leave the block with an error; the agent's ``on_stop`` raises SIGINT."""
    async with open_message_system(CONFIG, handle_signals=True) as system:
        await system.spawn(SignalsInItsStop, stops, signal.SIGINT)
        raise ValueError("the program's own error")


@pytest.mark.usefixtures("signals_never_reach_pytest")
class TestInProcess:
    async def test_after_sigterm_the_code_after_the_block_runs(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """SIGTERM cancels the body, the busy agent gets its shutdown time then its
        ``on_stop``, and leaving the block raises nothing."""
        stops: list[StopReason] = []
        with trio.fail_after(600):
            system = await serve_busy_until(signal.SIGTERM, stops)
        assert stops == [StopReason.KILLED]
        assert trio.current_time() == pytest.approx(5.0)  # its shutdown time, no more
        assert system.shutdown_signal is signal.SIGTERM

    async def test_after_sigint_leaving_the_block_raises_keyboard_interrupt(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """SIGINT shuts down as SIGTERM does, then ends the block as Ctrl+C would."""
        stops: list[StopReason] = []
        with trio.fail_after(600), pytest.raises(KeyboardInterrupt):
            await serve_busy_until(signal.SIGINT, stops)
        assert stops == [StopReason.KILLED]

    async def test_a_sigint_during_a_shutdown_keeps_it_graceful_and_the_error_as_context(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A first signal while the block is already leaving (with an error) does not hurry
        the shutdown; the block then raises ``KeyboardInterrupt``, the error its context."""
        stops: list[StopReason] = []
        with trio.fail_after(600), pytest.raises(KeyboardInterrupt) as raised:
            await fail_with_an_agent_that_signals(stops)
        assert stops == [StopReason.SHUTDOWN]  # its 3 s clean-up was not cut short
        assert isinstance(raised.value.__context__, ValueError)

    async def test_a_second_signal_before_the_shutdown_starts_cuts_it_short(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A body that takes a while to leave, and a second signal meanwhile: the shutdown
        cancels the busy agent at once instead of giving it its 30 s."""
        stops: list[StopReason] = []
        config = MessageSystemConfig(shutdown_timeout=30.0)
        with trio.fail_after(600):
            async with open_message_system(config, handle_signals=True) as system:
                await (await system.spawn(Busy, stops)).cast("question")
                try:
                    signal.raise_signal(signal.SIGTERM)
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):  # the body's own slow clean-up
                        await trio.sleep(1)
                        signal.raise_signal(signal.SIGTERM)
                        await trio.sleep(1)
                        shutdown_started = trio.current_time()
        assert stops == [StopReason.KILLED]
        assert trio.current_time() - shutdown_started <= 1.0

    async def test_on_stop_gets_one_more_second_once_the_shutdown_is_cut_short(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Cut short before it started (as above), the shutdown gives a slow ``on_stop`` one
        more second, not the agent's shutdown time."""
        ended: list[float] = []
        config = MessageSystemConfig(shutdown_timeout=30.0)
        with trio.fail_after(600):
            async with open_message_system(config, handle_signals=True) as system:
                await system.spawn(SlowToStop, ended)
                try:
                    signal.raise_signal(signal.SIGTERM)
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(1)
                        signal.raise_signal(signal.SIGTERM)
                        await trio.sleep(1)
                        shutdown_started = trio.current_time()
        assert len(ended) == 1
        assert ended[0] - shutdown_started == pytest.approx(1.0)

    async def test_the_signals_are_handled_as_before_once_the_block_is_left(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Signal handling lasts as long as the block: the program's own handlers are back
        after it."""
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        async with open_message_system(handle_signals=True):
            assert signal.getsignal(signal.SIGTERM) is not before[0]
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
