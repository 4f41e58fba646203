"""The demo's live view in a terminal, drawn with ``rich`` (the ``cli`` extra).

Imported only when ``rich`` is installed and the output is a terminal; it redraws the same
snapshots the plain view prints, in place.
"""

from __future__ import annotations

from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .. import CircuitState
from ._view import budgets, status, tree_rows
from .demo import Node, Snapshot

__all__ = ["LiveDisplay"]

#: Seconds between two redraws.
REFRESH = 0.2
#: Events kept on screen.
RECENT_EVENTS = 8

_STATE_STYLES = {
    "running": "green",
    "hibernated": "blue",
    "restarting": "yellow",
    "starting": "cyan",
}
_CIRCUIT_STYLES = {
    CircuitState.CLOSED: "green",
    CircuitState.HALF_OPEN: "yellow",
    CircuitState.OPEN: "bold red",
}


class LiveDisplay:
    """Redraws the supervision tree, counters and recent events every :data:`REFRESH` s."""

    interval = REFRESH

    def __init__(self, stream: TextIO, title: str) -> None:
        self.title = title
        self.console = Console(file=stream)
        # Redrawn from the Trio task that shows snapshots, not from rich's refresh thread.
        self.live = Live(console=self.console, auto_refresh=False)

    def __enter__(self) -> LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.live.stop()

    def show(self, snapshot: Snapshot) -> None:
        self.live.update(self.render(snapshot), refresh=True)

    def render(self, snapshot: Snapshot) -> RenderableType:
        """The counters, the tree, and as many recent events as the terminal has rows for."""
        console = self.console
        counters = Panel(
            Text("\n".join(status(snapshot))),
            title=f"{self.title}  [{snapshot.elapsed:4.1f} s]",
            # On the border: the budgets take no row from the events.
            subtitle=" · ".join(budgets(snapshot)) or None,
            box=box.ROUNDED,
        )
        tree = _tree_table(snapshot.tree, console)
        used = sum(len(console.render_lines(part, pad=False)) for part in (counters, tree))
        room = min(RECENT_EVENTS, console.height - used - 2)  # the events panel's border: 2
        if room < 1:
            return Group(counters, tree)
        events = Text(
            "\n".join(f"{event.at:6.2f}s  {event.text}" for event in snapshot.events[-room:])
            or "nothing yet",
            no_wrap=True,
            overflow="ellipsis",
        )
        return Group(counters, tree, Panel(events, title="recent events", box=box.ROUNDED))


#: The tree table's columns of fixed width: header and width.
_FIXED_COLUMNS = (("state", 10), ("restarts", 8), ("queue", 5), ("circuit", 9))
#: Narrower than this, the strategy column is left out rather than cut to nothing.
_NARROWEST_DETAIL = 12


def _tree_table(root: Node, console: Console) -> Table:
    """The supervision tree as a table that fits the console: the strategy column takes what
    the others leave (rich would otherwise squeeze every column alike)."""
    rows = list(tree_rows(root, ascii_only=False))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("agent", width=max(len(label) for label, _ in rows), no_wrap=True)
    for header, width in _FIXED_COLUMNS:
        table.add_column(header, width=width, justify="right" if width < 9 else "left")
    # A column costs its width, its padding and a separator: 3 more.
    detail_width = console.width - console.measure(table).maximum - 3
    with_detail = detail_width >= _NARROWEST_DETAIL
    if with_detail:
        table.add_column(
            "strategy, restarts", width=detail_width, no_wrap=True, overflow="ellipsis"
        )
    for label, node in rows:
        circuit = node.circuit or (CircuitState.CLOSED if node.kind == "agent" else None)
        cells: list[RenderableType] = [
            Text(label, style="bold" if node.kind != "agent" else ""),
            Text(node.state, style=_STATE_STYLES.get(node.state, "red")),
            str(node.restarts),
            "" if node.queued is None else str(node.queued),
            Text("") if circuit is None else Text(circuit.value, style=_CIRCUIT_STYLES[circuit]),
        ]
        if with_detail:
            cells.append(Text(node.detail, style="dim"))
        table.add_row(*cells)
    return table
