"""Counts in words, for the demo's output: ``1 task``, ``2 tasks``."""

from __future__ import annotations

__all__ = ["noun_for", "plural"]


def noun_for(count: int, noun: str, plural_form: str | None = None) -> str:
    """``noun`` as it goes after ``count``: singular for exactly one, plural otherwise.

    The plural adds an "s" unless ``plural_form`` names it (``"redelivery"``,
    ``"redeliveries"``): English has too many exceptions to guess them.
    """
    if count == 1:
        return noun
    return noun + "s" if plural_form is None else plural_form


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and its noun: ``plural(1, "task")`` is "1 task", ``plural(0, "task")`` is
    "0 tasks"."""
    return f"{count} {noun_for(count, noun, plural_form)}"
