"""``terraphim-actors demo``: the research-assistant scenario, shown live, then accounted for.

The scenario (the ``demo`` package) knows nothing of terminals; this module picks the display (the
``rich`` live view on a terminal when ``rich`` is installed, plain text otherwise), runs the
scenario, prints the summary, and turns the account into the exit code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from typing import TextIO

from ._view import PlainDisplay, summary
from .demo import DemoSettings, Display, run_scenario

__all__ = ["DemoSettings", "run_demo"]

#: Plain status blocks printed over a run.
PLAIN_BLOCKS = 5


def _open_display(
    stream: TextIO, settings: DemoSettings
) -> contextlib.AbstractContextManager[Display]:
    title = "terraphim-actors demo: a research assistant"
    if stream.isatty() and importlib.util.find_spec("rich") is not None:
        from ._live import LiveDisplay

        return LiveDisplay(stream, title)
    print(f"{title} (plain view: no terminal, or no rich)\n", file=stream)
    return PlainDisplay(stream, settings.duration / PLAIN_BLOCKS)


async def run_demo(settings: DemoSettings, stream: TextIO | None = None) -> int:
    """Run the demo and return the exit code: 0 when everything is accounted for, 1 otherwise.

    Accounted for means every question was planned or is a dead letter, every task was answered
    or is a dead letter with its reason, and the delivery statistics balance with nothing
    pending once the system has shut down. Work not done is accounted for, not hidden: the
    summary says how many questions were answered in full, in part or not at all.
    """
    stream = sys.stdout if stream is None else stream
    with _open_display(stream, settings) as display:
        report = await run_scenario(settings, display)
    print("\n" + "\n".join(summary(report)), file=stream, flush=True)
    return 0 if report.accounted_for else 1
