"""Child specs, health checks, and the checks that reject bad supervisor input."""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import pytest
import trio
from supervised import Unprintable

import supervisor
from supervisor import (
    AutoShutdown,
    ChildKind,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    HealthCheck,
    InvalidSpec,
    RestartBackoff,
    RestartIntensityExceeded,
    RestartStrategy,
    RestartType,
    Shutdown,
    Supervisor,
    SupervisorError,
    SupervisorNotRunning,
)
from supervisor._checks import MAX_COUNT, MAX_SECONDS


async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()


async def child_without_status() -> None:
    pass


async def healthy(value: object) -> bool:
    return True


ERROR_NAMES = sorted(
    name
    for name in supervisor.__all__
    if isinstance(getattr(supervisor, name), type)
    and issubclass(getattr(supervisor, name), Exception)
    and name != "SupervisorError"
)


class TestChildSpec:
    def test_defaults_follow_otp(self) -> None:
        """A spec is a permanent, insignificant worker with a 5 s shutdown and no hooks."""
        spec = ChildSpec("a", child)
        assert (spec.restart, spec.shutdown, spec.significant) == (
            RestartType.PERMANENT,
            5.0,
            False,
        )
        assert (spec.stop, spec.kind, spec.health_check) == (None, ChildKind.WORKER, None)

    def test_is_frozen(self) -> None:
        """A spec cannot be changed after it was made."""
        spec = ChildSpec("a", child)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            spec.restart = RestartType.TEMPORARY  # type: ignore[misc]

    def test_options_are_keyword_only(self) -> None:
        """Only the id and the start function are positional."""
        with pytest.raises(TypeError):
            ChildSpec("a", child, RestartType.TEMPORARY)  # type: ignore[misc]

    def test_start_with_task_status_reports_its_start(self) -> None:
        """A start function with a ``task_status`` parameter reports its own start."""
        assert ChildSpec("a", child).takes_task_status

    def test_start_without_task_status_is_started_at_once(self) -> None:
        """A start function without ``task_status`` counts as started when it is called."""
        assert not ChildSpec("a", child_without_status).takes_task_status

    def test_partial_keeps_task_status(self) -> None:
        """A ``functools.partial`` of a start function still reports its start."""

        async def with_argument(
            name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()

        assert ChildSpec("a", functools.partial(with_argument, "x")).takes_task_status

    def test_var_keyword_is_not_task_status(self) -> None:
        """Only a parameter literally named ``task_status`` counts, not ``**kwargs``."""

        async def anything(**kwargs: Any) -> None:
            pass

        assert not ChildSpec("a", anything).takes_task_status

    @pytest.mark.parametrize("restart", [RestartType.TRANSIENT, RestartType.TEMPORARY])
    def test_transient_and_temporary_may_be_significant(self, restart: RestartType) -> None:
        """Significant children are allowed for the restart types that can end for good."""
        assert ChildSpec("a", child, restart=restart, significant=True).significant

    @pytest.mark.parametrize("shutdown", [Shutdown.BRUTAL_KILL, Shutdown.INFINITY, 0.5, 3])
    def test_accepts_each_shutdown_mode(self, shutdown: float | Shutdown) -> None:
        """Shutdown is brutal kill, infinity, or a positive number of seconds."""
        assert ChildSpec("a", child, shutdown=shutdown).shutdown == shutdown


class TestChildSpecValidation:
    def test_unhashable_id(self) -> None:
        """A child id must be hashable, since children are looked up by id."""
        with pytest.raises(InvalidSpec, match="hashable"):
            ChildSpec(["a"], child)

    def test_start_not_callable(self) -> None:
        """The start function must be callable."""
        with pytest.raises(InvalidSpec, match="start"):
            ChildSpec("a", "not a function")  # type: ignore[arg-type]

    def test_restart_not_a_restart_type(self) -> None:
        """The restart type is a ``RestartType``, not its string value."""
        with pytest.raises(InvalidSpec, match="restart"):
            ChildSpec("a", child, restart="permanent")  # type: ignore[arg-type]

    @pytest.mark.parametrize("shutdown", [0, -1.0, math.nan, True, "5", None])
    def test_bad_shutdown(self, shutdown: object) -> None:
        """Shutdown seconds must be a number above 0 (not a bool, NaN or a string)."""
        with pytest.raises(InvalidSpec, match="shutdown"):
            ChildSpec("a", child, shutdown=shutdown)  # type: ignore[arg-type]

    @pytest.mark.parametrize("shutdown", [math.inf, 10**400, MAX_SECONDS * 2], ids=repr)
    def test_a_shutdown_beyond_the_bound_is_refused(self, shutdown: float) -> None:
        """Seconds stop at ``MAX_SECONDS`` (10**9): "for ever" is ``Shutdown.INFINITY``."""
        with pytest.raises(InvalidSpec, match=r"shutdown .*at most 1e\+09"):
            ChildSpec("a", child, shutdown=shutdown)

    def test_the_longest_shutdown_and_infinity_are_accepted(self) -> None:
        """``MAX_SECONDS`` itself is a valid shutdown time, and ``INFINITY`` waits for ever."""
        assert ChildSpec("a", child, shutdown=MAX_SECONDS).shutdown == MAX_SECONDS
        assert ChildSpec("a", child, shutdown=Shutdown.INFINITY).shutdown is Shutdown.INFINITY

    def test_stop_not_callable(self) -> None:
        """The stop hook must be callable."""
        with pytest.raises(InvalidSpec, match="stop"):
            ChildSpec("a", child, stop=42)  # type: ignore[arg-type]

    def test_retire_not_callable(self) -> None:
        """The retire hook must be callable."""
        with pytest.raises(InvalidSpec, match="retire"):
            ChildSpec("a", child, retire="later")  # type: ignore[arg-type]

    def test_a_changed_spec_is_checked_too(self) -> None:
        """``attrs.evolve`` makes a spec through the same checks."""
        significant = ChildSpec("a", child, restart=RestartType.TRANSIENT, significant=True)
        with pytest.raises(InvalidSpec, match="permanent"):
            attrs.evolve(significant, restart=RestartType.PERMANENT)

    def test_quiet_not_callable(self) -> None:
        """The quiet predicate must be callable."""
        with pytest.raises(InvalidSpec, match="quiet"):
            ChildSpec("a", child, quiet=True)  # type: ignore[arg-type]

    def test_permanent_child_cannot_be_significant(self) -> None:
        """A permanent child never ends for good, so it cannot be significant (OTP 24)."""
        with pytest.raises(InvalidSpec, match="permanent"):
            ChildSpec("a", child, significant=True)

    def test_significant_must_be_a_bool(self) -> None:
        """``significant`` is a bool, not any truthy value."""
        with pytest.raises(InvalidSpec, match="significant"):
            ChildSpec("a", child, restart=RestartType.TRANSIENT, significant=1)  # type: ignore[arg-type]

    def test_kind_not_a_child_kind(self) -> None:
        """The kind is a ``ChildKind``."""
        with pytest.raises(InvalidSpec, match="kind"):
            ChildSpec("a", child, kind="worker")  # type: ignore[arg-type]

    def test_health_check_not_a_health_check(self) -> None:
        """The health check is a ``HealthCheck``, not a bare function."""
        with pytest.raises(InvalidSpec, match="health_check"):
            ChildSpec("a", child, health_check=healthy)  # type: ignore[arg-type]


class TestHealthCheck:
    def test_timeout_defaults_to_the_interval(self) -> None:
        """Without a timeout, a probe may take one interval."""
        assert HealthCheck(check=healthy, interval=2.0).deadline == 2.0

    def test_timeout_sets_the_deadline(self) -> None:
        """An explicit timeout is how long a probe may take."""
        assert HealthCheck(check=healthy, interval=2.0, timeout=0.5).deadline == 0.5

    @pytest.mark.parametrize("interval", [0, -1, math.nan, False])
    def test_bad_interval(self, interval: object) -> None:
        """The interval is a number of seconds above 0."""
        with pytest.raises(InvalidSpec, match="interval"):
            HealthCheck(check=healthy, interval=interval)  # type: ignore[arg-type]

    @pytest.mark.parametrize("timeout", [0, -0.5, math.nan])
    def test_bad_timeout(self, timeout: float) -> None:
        """A timeout, if given, is a number of seconds above 0."""
        with pytest.raises(InvalidSpec, match="timeout"):
            HealthCheck(check=healthy, interval=1.0, timeout=timeout)

    @pytest.mark.parametrize("field", ["interval", "timeout"])
    @pytest.mark.parametrize("seconds", [math.inf, 10**400, MAX_SECONDS * 2], ids=repr)
    def test_a_time_beyond_the_bound_is_refused(self, field: str, seconds: float) -> None:
        """Interval and timeout stop at ``MAX_SECONDS`` too."""
        times = {"interval": 1.0, field: seconds}
        with pytest.raises(InvalidSpec, match=field):
            HealthCheck(check=healthy, **times)

    def test_check_not_callable(self) -> None:
        """The probe must be callable."""
        with pytest.raises(InvalidSpec, match="check"):
            HealthCheck(check=None, interval=1.0)  # type: ignore[arg-type]


class TestSupervisorValidation:
    def test_strategy_not_a_restart_strategy(self) -> None:
        """The strategy is a ``RestartStrategy``."""
        with pytest.raises(InvalidSpec, match="strategy"):
            Supervisor(strategy="one_for_all")  # type: ignore[arg-type]

    def test_auto_shutdown_not_an_auto_shutdown(self) -> None:
        """``auto_shutdown`` is an ``AutoShutdown``."""
        with pytest.raises(InvalidSpec, match="auto_shutdown"):
            Supervisor(auto_shutdown=True)  # type: ignore[arg-type]

    def test_backoff_not_a_restart_backoff(self) -> None:
        """``backoff`` is a ``RestartBackoff`` or None."""
        with pytest.raises(InvalidSpec, match="backoff"):
            Supervisor(backoff=1.0)  # type: ignore[arg-type]

    @pytest.mark.parametrize("children", [None, 5, object()], ids=["None", "int", "object"])
    def test_children_not_an_iterable(self, children: object) -> None:
        """``children`` is an iterable of ``ChildSpec``: anything else is an ``InvalidSpec``,
        not the TypeError of iterating it."""
        with pytest.raises(InvalidSpec, match="children"):
            Supervisor(children)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", [5, [1], 1.5], ids=["int", "list", "float"])
    def test_name_not_a_str(self, name: object) -> None:
        """``name`` is a str or None, as an agent's name is."""
        with pytest.raises(InvalidSpec, match="name"):
            Supervisor(name=name)  # type: ignore[arg-type]

    def test_stop_concurrently_not_a_bool(self) -> None:
        """``stop_concurrently`` is a bool."""
        with pytest.raises(InvalidSpec, match="stop_concurrently"):
            Supervisor(stop_concurrently=1)  # type: ignore[arg-type]

    @pytest.mark.parametrize("max_restarts", [-1, 2.5, True])
    def test_bad_max_restarts(self, max_restarts: object) -> None:
        """``max_restarts`` is an int of at least 0."""
        with pytest.raises(InvalidSpec, match="max_restarts"):
            Supervisor(max_restarts=max_restarts)  # type: ignore[arg-type]

    @pytest.mark.parametrize("max_seconds", [0, -5.0, math.nan])
    def test_bad_max_seconds(self, max_seconds: float) -> None:
        """``max_seconds`` is a number of seconds above 0."""
        with pytest.raises(InvalidSpec, match="max_seconds"):
            Supervisor(max_seconds=max_seconds)

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("max_seconds", math.inf),
            ("max_seconds", 10**400),
            ("max_seconds", MAX_SECONDS * 2),
            ("max_restarts", MAX_COUNT + 1),
            ("max_restarts", 10**400),
        ],
    )
    def test_an_intensity_beyond_its_bound_is_refused(self, option: str, value: float) -> None:
        """The intensity period stops at ``MAX_SECONDS``, the count at ``MAX_COUNT``; the
        message says the bound."""
        with pytest.raises(InvalidSpec, match=option) as caught:
            Supervisor(**{option: value})
        assert ("1e+09" if option == "max_seconds" else str(MAX_COUNT)) in str(caught.value)

    def test_child_not_a_child_spec(self) -> None:
        """Every child is a ``ChildSpec``."""
        with pytest.raises(InvalidSpec, match="ChildSpec"):
            Supervisor([child])  # type: ignore[list-item]

    def test_duplicate_child_ids(self) -> None:
        """Two children with one id are refused with ``DuplicateChild``, a ValueError."""
        with pytest.raises(DuplicateChild, match="'a'"):
            Supervisor([ChildSpec("a", child), ChildSpec("a", child_without_status)])
        assert issubclass(DuplicateChild, ValueError)

    def test_significant_child_needs_auto_shutdown(self) -> None:
        """Under ``AutoShutdown.NEVER`` significant children are not allowed."""
        spec = ChildSpec("a", child, restart=RestartType.TRANSIENT, significant=True)
        with pytest.raises(InvalidSpec, match="significant"):
            Supervisor([spec])
        assert Supervisor([spec], auto_shutdown=AutoShutdown.ANY_SIGNIFICANT)

    def test_defaults(self) -> None:
        """A supervisor is one for one, 5 restarts in 60 s, no auto shutdown, no backoff."""
        sup = Supervisor(name="root")
        assert (sup.strategy, sup.max_restarts, sup.max_seconds) == (
            RestartStrategy.ONE_FOR_ONE,
            5,
            60.0,
        )
        assert (sup.auto_shutdown, sup.backoff, sup.name) == (AutoShutdown.NEVER, None, "root")

    def test_lenient_allows_ten_restarts_in_two_minutes(self) -> None:
        """``Supervisor.lenient`` is 10 restarts in 120 s and keeps the other options."""
        sup = Supervisor.lenient([ChildSpec("a", child)], strategy=RestartStrategy.ONE_FOR_ALL)
        assert (sup.max_restarts, sup.max_seconds, sup.strategy) == (
            10,
            120.0,
            RestartStrategy.ONE_FOR_ALL,
        )

    def test_strict_allows_three_restarts_in_thirty_seconds(self) -> None:
        """``Supervisor.strict`` is 3 restarts in 30 s."""
        backoff = RestartBackoff()
        sup = Supervisor.strict(backoff=backoff)
        assert (sup.max_restarts, sup.max_seconds, sup.backoff) == (3, 30.0, backoff)


class TestErrors:
    @pytest.mark.parametrize("name", ERROR_NAMES)
    def test_every_error_is_a_supervisor_error(self, name: str) -> None:
        """One ``except SupervisorError`` catches every error the package raises."""
        assert issubclass(getattr(supervisor, name), SupervisorError)

    @pytest.mark.parametrize(
        ("error_type", "builtin"),
        [
            (InvalidSpec, ValueError),
            (DuplicateChild, ValueError),
            (ChildNotFound, LookupError),
            (SupervisorNotRunning, RuntimeError),
        ],
    )
    def test_errors_are_also_the_closest_builtin(
        self, error_type: type[SupervisorError], builtin: type[Exception]
    ) -> None:
        """Existing ``except ValueError`` / ``LookupError`` / ``RuntimeError`` clauses work."""
        assert issubclass(error_type, builtin)

    def test_child_running_is_not_a_value_error(self) -> None:
        """``ChildRunning`` is about state, not a bad value."""
        assert not issubclass(ChildRunning, ValueError)

    def test_child_start_failed_carries_the_id_and_cause(self) -> None:
        """``ChildStartFailed`` names the child and chains what it raised."""
        cause = OSError("port in use")
        error = ChildStartFailed("db", cause)
        assert (error.child_id, error.__cause__) == ("db", cause)
        assert "'db'" in str(error)

    @pytest.mark.parametrize("cause", [OSError("x" * 10_000_000), OSError(Unprintable())])
    def test_child_start_failed_quotes_what_it_raised_bounded(self, cause: OSError) -> None:
        """A huge or unprintable error makes a message of a few hundred characters."""
        error = ChildStartFailed(Unprintable(), cause)
        assert len(str(error)) < 500
        assert "<unprintable Unprintable>" in str(error)

    @pytest.mark.parametrize("cause", [KeyError("x" * 10_000_000), KeyError(Unprintable())])
    def test_restart_intensity_exceeded_quotes_the_last_failure_bounded(
        self, cause: KeyError
    ) -> None:
        """The last failure is quoted short, or as unprintable."""
        assert len(str(RestartIntensityExceeded("root", 3, 30.0, cause))) < 400

    def test_restart_intensity_exceeded_carries_the_last_failure(self) -> None:
        """``RestartIntensityExceeded`` keeps the limits and chains the last failure."""
        cause = KeyError("x")
        error = RestartIntensityExceeded("root", 3, 30.0, cause)
        assert (error.max_restarts, error.max_seconds) == (3, 30.0)
        assert error.last_failure is cause
        assert error.__cause__ is cause
