"""What a supervisor needs to know about a child: how to start it, restart it and stop it."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

import attrs

from ._bounded_repr import bounded_repr
from ._checks import check_callable, check_instance, check_seconds, is_callable, seconds
from ._errors import InvalidSpec

if TYPE_CHECKING:
    from ._supervisor import CurrentChild

__all__ = [
    "ChildKind",
    "ChildSpec",
    "HealthCheck",
    "RestartType",
    "Shutdown",
    "check_id",
    "takes_task_status",
]


class RestartType(enum.Enum):
    """When a child that exited by itself is started again (OTP's restart types)."""

    #: Always restarted, whether it crashed or returned.
    PERMANENT = "permanent"
    #: Restarted only after an abnormal exit: an exception. A normal return is final.
    TRANSIENT = "transient"
    #: Never restarted; forgotten once it exits.
    TEMPORARY = "temporary"


class Shutdown(enum.Enum):
    """How a child is stopped when it is not given a number of seconds."""

    #: Cancel the child at once.
    BRUTAL_KILL = "brutal_kill"
    #: Ask the child to stop and wait as long as it takes (the default for supervisors).
    INFINITY = "infinity"


class ChildKind(enum.Enum):
    """Whether a child does work or supervises others (``count_children`` tells them apart)."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


def check_id(value: object) -> None:
    try:
        hash(value)
    except TypeError:
        raise InvalidSpec(f"a child id must be hashable, got {bounded_repr(value)}") from None


@attrs.frozen(kw_only=True)
class HealthCheck:
    """A periodic probe of a running child; a failing probe restarts the child.

    ``check`` is called with the value the child reported through ``task_status.started``
    (``None`` if it reports nothing) every ``interval`` seconds. The probe fails when it raises,
    returns ``False``, or takes longer than ``timeout`` (default: ``interval``); the child is then
    cancelled and handled as a crash, which counts towards the restart intensity.
    """

    check: Callable[[Any], Awaitable[object]] = attrs.field(validator=is_callable)
    interval: float = attrs.field(validator=seconds)
    timeout: float | None = attrs.field(default=None)

    @timeout.validator
    def _check_timeout(self, _attribute: object, value: float | None) -> None:
        if value is not None:
            check_seconds("timeout", value)

    @property
    def deadline(self) -> float:
        """Seconds a probe may take."""
        return self.interval if self.timeout is None else self.timeout


@attrs.frozen(weakref_slot=False)  # kept for every agent; nothing refers to a spec weakly
class ChildSpec:
    """How to run one child.

    Attributes:
        id: unique among the supervisor's children.
        start: an async callable that runs the child until it exits. If it takes a
            ``task_status`` keyword, the supervisor waits for ``task_status.started(value)``
            before it starts the next child, and ``value`` is what ``which_children`` reports
            and what ``stop`` and the health check receive. Otherwise the child counts as
            started at once.
        restart: when it is started again after it exits by itself.
        shutdown: how it is stopped: a number of seconds means call ``stop`` and wait that
            long, then cancel it; ``BRUTAL_KILL`` cancels at once; ``INFINITY`` calls ``stop``
            and waits for as long as it takes.
        stop: a synchronous function asking the child to finish; it receives the started value.
            Without one, asking the child to stop means cancelling it (as an OTP process that
            does not trap exits dies at once).
        retire: a synchronous function called when the supervisor will not start the child
            again on its own: it was terminated, ended for good, or forgotten. It receives the
            child (a ``CurrentChild``: its supervisor, ``id`` and ``start``, so that one function
            serves every child, even children started from one spec) and releases what outlives
            the child's runs; it may be called more than once.
        quiet: an optional synchronous predicate, given the started value: True when
            stopping the child now would show nothing anyone can see but its end (nothing to
            clean up, nothing in hand, nobody told of it). Stopping children in order, the
            supervisor asks such children together and waits for them together, before it
            stops the next child that is not quiet: the order anyone can see is kept, and idle
            children end in one scheduler round rather than one each.
        significant: its own exit may end the supervisor (see ``AutoShutdown``); only for
            transient and temporary children.
        kind: ``WORKER`` or ``SUPERVISOR``.
        health_check: an optional periodic probe.
    """

    id: Hashable
    start: Callable[..., Awaitable[object]]
    restart: RestartType = attrs.field(default=RestartType.PERMANENT, kw_only=True)
    shutdown: float | Shutdown = attrs.field(default=5.0, kw_only=True)
    stop: Callable[[Any], object] | None = attrs.field(default=None, kw_only=True)
    retire: Callable[[CurrentChild], object] | None = attrs.field(default=None, kw_only=True)
    quiet: Callable[[Any], bool] | None = attrs.field(default=None, kw_only=True)
    significant: bool = attrs.field(default=False, kw_only=True)
    kind: ChildKind = attrs.field(default=ChildKind.WORKER, kw_only=True)
    health_check: HealthCheck | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        """Check every field in one call rather than through an attrs validator each (two
        or three calls apiece): a spec is made for every agent spawned."""
        check_id(self.id)
        check_callable("start", self.start)
        check_instance("restart", self.restart, RestartType)
        if not isinstance(self.shutdown, Shutdown):
            check_seconds("shutdown", self.shutdown)
        if self.stop is not None:
            check_callable("stop", self.stop)
        if self.retire is not None:
            check_callable("retire", self.retire)
        if self.quiet is not None:
            check_callable("quiet", self.quiet)
        if not isinstance(self.significant, bool):
            raise InvalidSpec(f"significant must be a bool, got {bounded_repr(self.significant)}")
        if self.significant and self.restart is RestartType.PERMANENT:
            raise InvalidSpec(
                f"child {bounded_repr(self.id)}: a permanent child cannot be significant"
            )
        check_instance("kind", self.kind, ChildKind)
        if self.health_check is not None:
            check_instance("health_check", self.health_check, HealthCheck)

    @property
    def takes_task_status(self) -> bool:
        """Whether ``start`` reports its own start through ``task_status``."""
        return takes_task_status(self.start)


def takes_task_status(start: Callable[..., object]) -> bool:
    """Whether the child's ``start`` reports its own start through ``task_status``."""
    if isinstance(start, functools.partial):
        return "task_status" not in start.keywords and takes_task_status(start.func)
    if inspect.ismethod(start):
        start = start.__func__
    elif not inspect.isfunction(start):
        start = type(start).__call__  # a callable object: its class decides
    return _has_task_status_parameter(start)


@functools.lru_cache(maxsize=1024)
def _has_task_status_parameter(function: Callable[..., object]) -> bool:
    """Looked up once per function: ``inspect.signature`` costs more than starting a child."""
    try:
        return "task_status" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
