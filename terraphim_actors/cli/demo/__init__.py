"""The demo's scenario: a research assistant built from agents that fail, all offline and seeded.

A user asks questions; a planner splits each into tasks; a pool of simulated LLM workers
answers the tasks, asking a search tool that fails in bursts behind its circuit breaker; an
aggregator stores the answers, which reach it at least once. What fails is expected or left to
crash, and the run returns a :class:`Report` that accounts for every question and task.

One job per module, each using only the public names of ``terraphim_actors`` and
``supervisor``:

- ``world``: the settings, the questions and tasks, the simulated model and search outages.
- ``ledger``: the application's own records (questions, plans, answers, dead letters seen,
  search counts) and the events worth telling.
- ``agents``: the planner, the LLM workers, the search tool, the aggregator, the observer.
- ``snapshot``: what a display sees (the supervision tree, the counts, the events) and the
  ``Display`` protocol snapshots go to.
- ``report``: the account of a run once the system has shut down.
- ``run``: building the tree, asking, sampling the circuits, showing snapshots, the report.

The presentation (``cli._view``, ``cli._live``) reads only snapshots and the report.
"""

from .report import QuestionOutcomes, Report, TaskOutcome
from .run import run_scenario
from .snapshot import Display, Node, Progress, Snapshot
from .world import DemoSettings

__all__ = [
    "DemoSettings",
    "Display",
    "Node",
    "Progress",
    "QuestionOutcomes",
    "Report",
    "Snapshot",
    "TaskOutcome",
    "run_scenario",
]
