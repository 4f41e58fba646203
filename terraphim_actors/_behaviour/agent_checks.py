"""Checks of an agent class, made once per class when it is first spawned.

A handler that is not ``async def``, that takes the wrong parameters, or a hook whose name is
misspelled (``handle_calls``, ``on_stat``) would otherwise show only when a message arrives, or
never: the misspelled hook is simply not called. So would an error-handling attribute
(``resume_on``, ``stop_on``, ``no_retry_on``) that is not exception classes: only when a handler
raises, as a ``TypeError`` from ``isinstance`` that replaces the decision. ``spawn``,
``spawn_pool`` and ``agent_spec`` refuse such a class at once with an ``InvalidConfig`` naming
the method or attribute. A class that passes is remembered, so spawning it again costs a lookup.
"""

from __future__ import annotations

import inspect
import logging
import types
import weakref
from typing import Any

from .._core.bounded_repr import bounded_repr
from ..errors import InvalidConfig
from .agent import Agent

__all__ = ["check_agent_class", "warn_cast_returned"]

logger = logging.getLogger("terraphim_actors")

#: The hooks the cell calls, with the numbers of positional arguments (after ``self``) each
#: may take: ``on_start`` with or without the context.
_HANDLERS: dict[str, tuple[int, ...]] = {
    "handle_call": (2,),
    "handle_cast": (2,),
    "handle_info": (2,),
    "on_start": (0, 1),
    "on_stop": (1,),
}

#: Most edits (insertions, deletions, substitutions, swaps of neighbours) by which a method's
#: name may differ from a hook's to be taken for a misspelling of it.
_MISSPELLING_EDITS = 2

#: The methods of ``Agent`` a subclass overrides: every public callable it defines.
_HOOKS = frozenset(
    name for name, value in vars(Agent).items() if not name.startswith("_") and callable(value)
)

#: The class attributes that a failed handler's error is matched against, with ``isinstance``.
_ERROR_CLASSES = ("resume_on", "stop_on", "no_retry_on")

_checked: weakref.WeakSet[type[Agent]] = weakref.WeakSet()
_warned_cast_return: weakref.WeakSet[type[Agent]] = weakref.WeakSet()


def check_agent_class(agent_class: type[Agent]) -> None:
    """Refuse an agent class whose hooks the system could not call as written.

    Raises:
        InvalidConfig: a handler is not ``async def`` or takes the wrong parameters, a
            method's name is a misspelled hook's, or ``resume_on``, ``stop_on`` or
            ``no_retry_on`` is not a tuple of exception classes.
    """
    if agent_class in _checked:
        return
    for name, arities in _HANDLERS.items():
        _check_handler(agent_class, name, arities)
    for name in _ERROR_CLASSES:
        _check_error_classes(agent_class, name)
    for owner in agent_class.__mro__:
        if owner is Agent or not issubclass(owner, Agent):
            continue
        for name, value in vars(owner).items():
            if name.startswith("_") or name in _HOOKS:
                continue
            if not (callable(value) or isinstance(value, classmethod)):
                continue
            for hook in sorted(_HOOKS):
                if _edits(name, hook, _MISSPELLING_EDITS) <= _MISSPELLING_EDITS:
                    raise InvalidConfig(
                        f"{owner.__qualname__}.{name} looks like a misspelling of the hook "
                        f"{hook!r}, which the system would never call; name it {hook!r}, or "
                        f"give it a name further from it (or a leading underscore)"
                    )
    _checked.add(agent_class)


def _check_handler(agent_class: type[Agent], name: str, arities: tuple[int, ...]) -> None:
    handler = inspect.getattr_static(agent_class, name)
    if handler is vars(Agent).get(name):
        return  # the default
    where = f"{agent_class.__qualname__}.{name}"
    if not isinstance(handler, types.FunctionType):
        raise InvalidConfig(
            f"{where} must be a method defined with 'async def', got {bounded_repr(handler)}"
        )
    if not (
        inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(inspect.unwrap(handler))
    ):
        raise InvalidConfig(f"{where} must be defined with 'async def': the system awaits it")
    signature = inspect.signature(handler)
    for arity in arities:
        try:
            signature.bind(*range(arity + 1))
        except TypeError:
            continue
        return
    expected = " or ".join(_spelled(name, arity) for arity in arities)
    raise InvalidConfig(f"{where}{signature} takes the wrong parameters: expected {expected}")


def _check_error_classes(agent_class: type[Agent], name: str) -> None:
    value = getattr(agent_class, name)
    # One class alone is taken as isinstance takes it: only its tuple form is documented, but
    # refusing a spelling that works as meant would help nobody.
    classes = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(cls, type) and issubclass(cls, BaseException) for cls in classes):
        raise InvalidConfig(
            f"{agent_class.__qualname__}.{name} must be a tuple of exception classes, got"
            f" {bounded_repr(value)}"
        )


def _spelled(name: str, arity: int) -> str:
    parameters = {
        "handle_call": "(self, message, ctx)",
        "handle_cast": "(self, message, ctx)",
        "handle_info": "(self, message, ctx)",
        "on_start": "(self)" if arity == 0 else "(self, ctx)",
        "on_stop": "(self, reason)",
    }
    return f"{name}{parameters[name]}"


def _edits(first: str, second: str, bound: int) -> int:
    """The edits between two names (Damerau-Levenshtein, neighbours swapped counting one),
    or ``bound + 1`` as soon as it is known to be more than ``bound``."""
    if abs(len(first) - len(second)) > bound:
        return bound + 1
    before: list[int] | None = None
    previous = list(range(len(second) + 1))
    for i, letter in enumerate(first, 1):
        current = [i] + [0] * len(second)
        for j, other in enumerate(second, 1):
            cost = letter != other
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if (
                before is not None
                and i > 1
                and j > 1
                and letter == second[j - 2]
                and first[i - 2] == other
            ):
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > bound:
            return bound + 1
        before, previous = previous, current
    return previous[-1]


def warn_cast_returned(agent_class: type[Agent], value: Any) -> None:
    """Log, once per class, that its ``handle_cast`` returned a value nobody receives."""
    if agent_class in _warned_cast_return:
        return
    _warned_cast_return.add(agent_class)
    logger.warning(
        "%s.handle_cast returned %s, which is dropped: a cast has no reply (use a call, or "
        "return None)",
        agent_class.__qualname__,
        bounded_repr(value),
    )
