"""Counting the schedule points one task takes, to check where an operation yields."""

from __future__ import annotations

from typing import Any

import trio


class StepsOf(trio.abc.Instrument):
    """While installed (``with StepsOf(task) as steps:``), counts the steps ``task`` runs in
    :attr:`count`: each step ends at a schedule point, so a task that runs one step took none
    yet."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += task is self.task

    def __enter__(self) -> StepsOf:
        trio.lowlevel.add_instrument(self)
        return self

    def __exit__(self, *_: Any) -> None:
        trio.lowlevel.remove_instrument(self)
