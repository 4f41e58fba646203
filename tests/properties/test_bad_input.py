"""Bad input raises typed errors and breaks nothing (hypothesis).

Every configuration field and API argument gets values drawn from everything a caller might
pass by mistake: negative, zero, huge and non-finite numbers, bools, strings, ``None``, lists,
enums of the wrong kind, unknown names. A value the field accepts must work; any other must
raise ``InvalidConfig`` (or the precise ``terraphim_actors.errors`` type the API documents),
never a bare ``TypeError``, ``AttributeError`` or a hang. After each bad call the system must
still serve a healthy agent, and account for every message it accepted.

The cases these properties found wrong (unhashable and mistyped addresses, counts beyond a
C ``ssize_t``, ...) are kept, shrunk, in ``TestMistakesRaiseTypedErrors`` at the end.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import terraphim_actors
from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DedupWindow,
    DeliveryConfig,
    DeliveryGuarantee,
    LoadBalancing,
    Mailbox,
    MailboxConfig,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    Priority,
    RestartBackoff,
    RestartType,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors._core.checks import MAX_COUNT, MAX_FACTOR, MAX_SECONDS
from terraphim_actors.errors import (
    AgentNotFound,
    AgentStopped,
    CallTimeout,
    CallToSelf,
    DuplicateAgent,
    InvalidConfig,
    InvalidMessage,
    MessagingError,
    ReplyAlreadySent,
    SystemClosed,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _on_a_clock_of_its_own(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run each example of an async hypothesis test in a ``trio.run`` of its own, on a fresh
    autojumping clock from 0.

    The ``autojump_clock`` fixture is one clock for all of a test's examples: after examples
    that sleep past every due time (10**13 s each), a float cannot add a short delay to its
    time (at 10**16 s, ``now + 1.0 == now``), so a timer due "a moment later" is due again at
    the same instant and the example never ends. No monotonic clock reaches such times."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        trio.run(
            functools.partial(test, *args, **kwargs),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )

    return run


#: A count far beyond anything a C structure can hold.
HUGE = 10**30
#: Virtual seconds after which a bad call counts as hung (every timeout involved is shorter).
HANG = 30.0

# -- what a caller might pass ---------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-HUGE, max_value=HUGE),
    st.sampled_from([0, 1, -1, 2, 10**9, 10**9 + 1, sys.maxsize, sys.maxsize + 1, HUGE, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, math.inf, -math.inf, math.nan, 1e308]),
    st.sampled_from([1e9, 1e9 + 1, 1000.0, 1000.5, 5e-324]),
)
#: Anything at all, including the right thing now and then.
anything = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.sampled_from([object(), (), (1, 2), b"5", 1j, AgentId()]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
    st.sampled_from(list(Priority) + list(OverflowPolicy) + list(DeliveryGuarantee)),
    st.sampled_from(list(LoadBalancing) + list(RestartType)),
    st.sampled_from([MailboxConfig(), DeliveryConfig(), DedupWindow(), CircuitBreakerConfig()]),
    st.sampled_from([RouterConfig(), MessageOptions(), MessageSystemConfig()]),
)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def seconds(value: object) -> bool:
    """What every positive duration accepts: up to ``MAX_SECONDS``, never an infinity."""
    return is_number(value) and 0 < value <= MAX_SECONDS  # type: ignore[operator]


def seconds_or_zero(value: object) -> bool:
    return is_number(value) and 0 <= value <= MAX_SECONDS  # type: ignore[operator]


def count(minimum: int, maximum: int = MAX_COUNT) -> Callable[[object], bool]:
    def valid(value: object) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum
        )

    return valid


def instance(kind: type) -> Callable[[object], bool]:
    return lambda value: isinstance(value, kind)


def optional(valid: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or valid(value)


def factor(minimum: float) -> Callable[[object], bool]:
    """What a multiplier or a jitter fraction accepts: up to ``MAX_FACTOR``."""
    return lambda value: is_number(value) and minimum <= value <= MAX_FACTOR  # type: ignore[operator]


#: Each configuration class, and for each field what it accepts.
FIELDS: dict[type, dict[str, Callable[[object], bool]]] = {
    MailboxConfig: {
        "capacity": optional(count(1)),
        "overflow": instance(OverflowPolicy),
    },
    DedupWindow: {"max_messages": count(1), "max_age": seconds},
    DeliveryConfig: {
        "guarantee": instance(DeliveryGuarantee),
        "max_retries": count(0),
        "retry_delay": seconds_or_zero,
        "retry_backoff_multiplier": factor(1),
        "max_retry_delay": seconds,
        "jitter": factor(0),
        "dedup_window": instance(DedupWindow),
        "seed": optional(count(0)),
    },
    CircuitBreakerConfig: {
        "failure_threshold": count(1),
        "reset_timeout": seconds,
        "half_open_max_calls": count(1),
    },
    RouterConfig: {"circuit_breaker": optional(instance(CircuitBreakerConfig))},
    MessageOptions: {
        "priority": instance(Priority),
        "timeout": seconds,
        "max_retries": optional(count(0)),
        "retry_delay": optional(seconds_or_zero),
        "guarantee": optional(instance(DeliveryGuarantee)),
    },
    MessageSystemConfig: {
        "mailbox": instance(MailboxConfig),
        "shutdown_timeout": seconds,
        "dead_letter_capacity": count(1),  # it sizes a deque
        "max_restarts": count(0),
        "max_seconds": seconds,
        "delivery": instance(DeliveryConfig),
        "router": instance(RouterConfig),
    },
}
FIELD_CASES = [(kind, name) for kind, fields in FIELDS.items() for name in fields]


# -- what a field accepts, at its edges ------------------------------------------------------------


def accepted_seconds(*, zero: bool = False) -> st.SearchStrategy[float]:
    """Durations a field takes, the extremes most of all: the bound, the tiniest, 0."""
    edges = [5e-324, 1e-9, 1.0, MAX_SECONDS, int(MAX_SECONDS)] + ([0, 0.0] if zero else [])
    return st.sampled_from(edges) | st.floats(0.0 if zero else 5e-324, MAX_SECONDS)


def accepted_factor(minimum: float) -> st.SearchStrategy[float]:
    """Multipliers (from 1) and jitter fractions (from 0) a field takes."""
    return st.sampled_from([minimum, int(minimum), MAX_FACTOR, int(MAX_FACTOR)]) | st.floats(
        minimum, MAX_FACTOR
    )


def accepted_count(minimum: int) -> st.SearchStrategy[int]:
    """Counts a field takes, up to the largest."""
    return st.sampled_from([minimum, minimum + 1, MAX_COUNT]) | st.integers(minimum, MAX_COUNT)


accepted_delivery = st.builds(
    DeliveryConfig,
    guarantee=st.sampled_from(DeliveryGuarantee),
    max_retries=st.sampled_from([0, 1, 3, MAX_COUNT]),
    retry_delay=accepted_seconds(zero=True),
    retry_backoff_multiplier=accepted_factor(1),
    max_retry_delay=accepted_seconds(),
    jitter=accepted_factor(0),
    seed=st.none() | accepted_count(0),
    dedup_window=st.builds(DedupWindow, max_messages=accepted_count(1), max_age=accepted_seconds()),
)
accepted_breaker = st.none() | st.builds(
    CircuitBreakerConfig,
    failure_threshold=accepted_count(1),
    reset_timeout=accepted_seconds(),
    half_open_max_calls=accepted_count(1),
)
accepted_options = st.builds(
    MessageOptions,
    timeout=accepted_seconds(),
    max_retries=st.none() | st.sampled_from([0, 2, MAX_COUNT]),
    retry_delay=st.none() | accepted_seconds(zero=True),
    guarantee=st.none() | st.sampled_from(DeliveryGuarantee),
)


class CrashesAtFirst(Agent):
    """Crashes on the first ``crashes`` runs of each message (counted in ``runs``, which its
    restarts share); a cast also sets a timer."""

    def __init__(self, runs: collections.Counter[object], crashes: int, timer_delay: float) -> None:
        self.runs = runs
        self.crashes = crashes
        self.timer_delay = timer_delay

    def crash_at_first(self, message: object) -> None:
        self.runs[message] += 1
        if self.runs[message] <= self.crashes:
            raise RuntimeError(f"run {self.runs[message]} of {message!r}")

    async def handle_cast(self, message: object, ctx: Context) -> None:
        self.crash_at_first(message)
        ctx.send_after(self.timer_delay, "tick")

    async def handle_call(self, message: object, ctx: Context) -> object:
        self.crash_at_first(message)
        return message

    async def handle_info(self, message: object, ctx: Context) -> None:
        pass


class Echo(Agent):
    """Replies with what it is called with; takes casts quietly."""

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return message

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        pass


async def assert_still_serving(system: MessageSystem, healthy: AgentRef) -> None:
    """The system serves a healthy agent, and a new one, as before."""
    assert await healthy.call("ping", timeout=1.0) == "ping"
    newcomer = await system.spawn(Echo)
    assert await newcomer.call("hello", timeout=1.0) == "hello"


# -- configurations ---------------------------------------------------------------------------


class TestConfigurations:
    @pytest.mark.parametrize(
        ("kind", "field"), FIELD_CASES, ids=[f"{k.__name__}.{f}" for k, f in FIELD_CASES]
    )
    @SETTINGS
    @given(value=anything)
    def test_a_field_takes_what_it_accepts_and_refuses_the_rest(
        self, kind: type, field: str, value: object
    ) -> None:
        """A valid value builds the config with it; any other raises ``InvalidConfig``."""
        if FIELDS[kind][field](value):
            assert getattr(kind(**{field: value}), field) is value
        else:
            with pytest.raises(InvalidConfig):
                kind(**{field: value})

    @pytest.mark.parametrize("kind", list(FIELDS), ids=lambda kind: kind.__name__)
    def test_an_unknown_option_is_a_type_error(self, kind: type) -> None:
        """Options are keyword-only and named: a misspelt one fails loudly."""
        with pytest.raises(TypeError):
            kind(unknown_option=1)

    @pytest.mark.parametrize("value", [object(), "route", 3])
    def test_a_custom_router_must_route(self, value: object) -> None:
        """A custom router is anything with ``route(envelope, system)``."""
        with pytest.raises(InvalidConfig):
            RouterConfig(custom_router=value)  # type: ignore[arg-type]

    @SETTINGS
    @given(
        mailbox=st.builds(
            MailboxConfig,
            capacity=st.none() | accepted_count(1),
            overflow=st.sampled_from(OverflowPolicy),
        ),
        delivery=accepted_delivery,
        breaker=accepted_breaker,
        dead_letter_capacity=accepted_count(1),
        max_restarts=accepted_count(0),
        max_seconds=accepted_seconds(),
    )
    async def test_any_accepted_configuration_opens_a_working_system(
        self,
        autojump_clock: trio.testing.MockClock,
        mailbox: MailboxConfig,
        delivery: DeliveryConfig,
        breaker: CircuitBreakerConfig | None,
        dead_letter_capacity: int,
        max_restarts: int,
        max_seconds: float,
    ) -> None:
        """Extreme but valid values (the largest counts and times) run: a call and a cast of
        each guarantee go through, and nothing is left pending."""
        config = MessageSystemConfig(
            mailbox=mailbox,
            delivery=delivery,
            router=RouterConfig(circuit_breaker=breaker),
            dead_letter_capacity=dead_letter_capacity,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
        )
        async with open_message_system(config) as system:
            echo = await system.spawn(Echo)
            for guarantee in DeliveryGuarantee:
                options = MessageOptions(guarantee=guarantee)
                assert await echo.call(guarantee, timeout=1.0, options=options) is guarantee
                await echo.cast(guarantee, options=options)
                # A cast that finds room does not yield (the send budget): let the agent take
                # it, or a mailbox of one that rejects refuses the next call.
                await trio.testing.wait_all_tasks_blocked()
            assert system.delivery.get_stats().pending == 0

    @settings(SETTINGS, max_examples=30)
    @given(
        delivery=accepted_delivery,
        breaker=accepted_breaker,
        backoff=st.none()
        | st.builds(
            RestartBackoff,
            initial=accepted_seconds(),
            multiplier=accepted_factor(1),
            maximum=accepted_seconds(),
            jitter=accepted_factor(0),
            reset_after=accepted_seconds(),
        ),
        options=st.lists(accepted_options, min_size=1, max_size=4),
        crashes=st.integers(0, 3),
        call_timeout=accepted_seconds(),
        timer_delay=accepted_seconds(zero=True),
        shutdown=accepted_seconds(),
    )
    @_on_a_clock_of_its_own
    async def test_messages_through_an_accepted_configuration_all_end(
        self,
        delivery: DeliveryConfig,
        breaker: CircuitBreakerConfig | None,
        backoff: RestartBackoff | None,
        options: list[MessageOptions],
        crashes: int,
        call_timeout: float,
        timer_delay: float,
        shutdown: float,
    ) -> None:
        """Whatever the accepted values, the arithmetic done later with them (deadlines,
        backoffs with jitter, circuit reopenings, expiry, timers, restart backoffs) never
        fails: casts and calls that crash their handler are retried, expire, or become dead
        letters; nothing escapes the system, and every message ends."""
        config = MessageSystemConfig(
            delivery=delivery,
            router=RouterConfig(circuit_breaker=breaker),
            restart_backoff=backoff,
            max_restarts=MAX_COUNT,  # here the agent crashes on purpose: never escalate
            max_seconds=MAX_SECONDS,
        )
        async with open_message_system(config) as system:
            runs: collections.Counter[object] = collections.Counter()
            flaky = await system.spawn(
                CrashesAtFirst, runs, crashes, timer_delay, shutdown=shutdown
            )
            for number, each in enumerate(options):
                with contextlib.suppress(MessagingError):  # at most once, an open circuit
                    await flaky.cast(("cast", number), options=each)
                with contextlib.suppress(MessagingError):
                    await flaky.call(("call", number), timeout=call_timeout, options=each)
            await trio.sleep(10 * MAX_SECONDS * (1 + MAX_FACTOR))  # past every due time
        stats = system.delivery.get_stats()
        assert stats.pending == 0, stats


# -- API arguments ------------------------------------------------------------------------------


@attrs.frozen
class Misuse:
    """One bad call on a running system, and the errors it may raise."""

    name: str
    value: Any


misuses = st.one_of(
    st.builds(Misuse, st.just("call timeout"), anything),
    st.builds(Misuse, st.just("cast priority"), anything),
    st.builds(Misuse, st.just("cast options"), anything),
    st.builds(Misuse, st.just("info_nowait priority"), anything),
    st.builds(Misuse, st.just("spawn name"), anything),
    st.builds(Misuse, st.just("spawn mailbox"), anything),
    st.builds(Misuse, st.just("spawn shutdown"), anything),
    st.builds(Misuse, st.just("spawn restart"), anything),
    st.builds(Misuse, st.just("spawn class"), anything),
    st.builds(Misuse, st.just("pool size"), anything),
    st.builds(Misuse, st.just("pool strategy"), anything),
    st.builds(Misuse, st.just("pool seed"), anything),
    st.builds(Misuse, st.just("ref"), anything),
    st.builds(Misuse, st.just("stop"), anything),
    st.builds(Misuse, st.just("register"), anything),
    st.builds(Misuse, st.just("send_message"), anything),
    st.builds(Misuse, st.just("send_message to"), anything),
    st.builds(Misuse, st.just("send_message options"), anything),
    st.builds(Misuse, st.just("send_message call to"), anything),
    st.builds(Misuse, st.just("subscribe"), anything),
    st.builds(Misuse, st.just("whereis"), anything),
    st.builds(Misuse, st.just("receive_matching"), anything),
    st.builds(Misuse, st.just("receive_timeout"), anything),
)


async def misuse(system: MessageSystem, healthy: AgentRef, case: Misuse) -> None:
    """Make the bad call; it may succeed when the value happens to be valid."""
    value = case.value
    at_most_once = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
    match case.name:
        case "call timeout":
            await healthy.call("x", timeout=value)
        case "cast priority":
            await healthy.cast("x", priority=value)
        case "cast options":
            await healthy.cast("x", options=value)
        case "info_nowait priority":
            healthy.info_nowait("x", priority=value)
        case "spawn name":
            await system.spawn(Echo, name=value)
        case "spawn mailbox":
            await system.spawn(Echo, mailbox=value)
        case "spawn shutdown":
            await system.spawn(Echo, shutdown=value)
        case "spawn restart":
            await system.spawn(Echo, restart=value)
        case "spawn class":
            await system.spawn(value)
        case "pool size":
            await system.spawn_pool(Echo, size=value if not is_number(value) else min(value, 3))
        case "pool strategy":
            await system.spawn_pool(Echo, size=1, strategy=value)
        case "pool seed":
            await system.spawn_pool(Echo, size=1, seed=value)
        case "ref":
            system.ref(value)
        case "stop":
            await system.stop(value)
        case "register":
            system.register_agent(value)
        case "send_message":
            await system.send_message(value)
        case "send_message to":
            await system.send_message(cast(None, "x", at_most_once, recipient=value))
        case "send_message options":
            envelope = cast(None, "x", recipient=healthy.id).evolve(options=value)
            await system.send_message(envelope)
        case "send_message call to":
            envelope, reply = call(None, "x", 1.0, recipient=value, options=at_most_once)
            await system.send_message(envelope)
            await reply
        case "subscribe":
            system.subscribe(value)
        case "whereis":
            system.whereis(value)
        case "receive_matching":
            mailbox = system.register_agent(AgentId())
            mailbox.send_nowait(cast(None, "waiting"))  # a valid predicate is called at once
            await mailbox.receive_matching(value, timeout=1.0)
        case "receive_timeout":
            mailbox = system.register_agent(AgentId())
            mailbox.send_nowait(cast(None, "waiting"))  # a valid timeout returns at once
            await mailbox.receive_timeout(value)


class TestApiArguments:
    @SETTINGS
    @given(cases=st.lists(misuses, min_size=1, max_size=8))
    async def test_bad_arguments_raise_typed_errors_and_the_system_serves_on(
        self, autojump_clock: trio.testing.MockClock, cases: list[Misuse]
    ) -> None:
        """Whatever a caller passes, what goes wrong is a ``MessagingError``, and the system
        goes on serving and accounting."""
        async with open_message_system() as system:
            healthy = await system.spawn(Echo, name="healthy")
            for case in cases:
                try:
                    with trio.fail_after(HANG):
                        await misuse(system, healthy, case)
                except MessagingError:
                    pass
                except trio.TooSlowError:
                    pytest.fail(f"{case} hung")
                await assert_still_serving(system, healthy)
            await trio.sleep(60)  # every retry and timeout has run its course
            assert system.delivery.get_stats().pending == 0

    async def test_an_unknown_name_is_agent_not_found(self, system: MessageSystem) -> None:
        """``ref(name)`` for a name nobody has."""
        with pytest.raises(AgentNotFound):
            system.ref("nobody")

    async def test_a_taken_name_is_duplicate_agent(self, system: MessageSystem) -> None:
        """Names are unique."""
        await system.spawn(Echo, name="taken")
        with pytest.raises(DuplicateAgent):
            await system.spawn(Echo, name="taken")

    async def test_an_envelope_without_recipient_is_invalid_config(
        self, system: MessageSystem
    ) -> None:
        """Without a custom router, an envelope must say where it goes."""
        with pytest.raises(InvalidConfig):
            await system.send_message(cast(None, "nowhere"))

    async def test_an_envelope_with_bad_options_is_invalid_message(
        self, system: MessageSystem
    ) -> None:
        """An envelope whose options are not ``MessageOptions`` is not one the system carries."""
        envelope = cast(None, "x", recipient="anyone").evolve(options="fast")
        with pytest.raises(InvalidMessage):
            await system.send_message(envelope)


# -- a closed system ------------------------------------------------------------------------------


class TestClosedSystem:
    @pytest.fixture
    async def closed(self) -> tuple[MessageSystem, AgentRef]:
        """A system that has shut down, and a ref to an agent it ran."""
        async with open_message_system() as system:
            ref = await system.spawn(Echo, name="echo")
        return system, ref

    @pytest.mark.parametrize(
        "action",
        [
            lambda system: system.spawn(Echo),
            lambda system: system.spawn_pool(Echo, size=2),
            lambda system: system.start_supervisor([]),
        ],
        ids=["spawn", "spawn_pool", "start_supervisor"],
    )
    async def test_starting_anything_raises_system_closed(
        self, closed: tuple[MessageSystem, AgentRef], action: Any
    ) -> None:
        """A closed system takes no new agents."""
        system, _ = closed
        with pytest.raises(SystemClosed):
            await action(system)

    async def test_registering_a_mailbox_raises_system_closed(
        self, closed: tuple[MessageSystem, AgentRef]
    ) -> None:
        """Nor new mailboxes."""
        system, _ = closed
        with pytest.raises(SystemClosed):
            system.register_agent(AgentId())

    async def test_a_call_after_shutdown_raises_agent_stopped(
        self, closed: tuple[MessageSystem, AgentRef]
    ) -> None:
        """A call to an agent of a closed system fails at once, as to any stopped agent."""
        _, ref = closed
        with pytest.raises(AgentStopped):
            await ref.call("anyone?")

    @pytest.mark.parametrize("guarantee", list(DeliveryGuarantee))
    async def test_a_cast_after_shutdown_is_a_dead_letter(
        self, closed: tuple[MessageSystem, AgentRef], guarantee: DeliveryGuarantee
    ) -> None:
        """A cast after shutdown is refused quietly and accounted for."""
        system, ref = closed
        before = system.get_stats()[0].dead_letters
        await ref.cast("late", options=MessageOptions(guarantee=guarantee))
        assert system.get_stats()[0].dead_letters == before + 1
        assert system.delivery.get_stats().pending == 0

    async def test_stopping_an_agent_after_shutdown_is_harmless(
        self, closed: tuple[MessageSystem, AgentRef]
    ) -> None:
        """Stopping what has stopped changes nothing."""
        system, ref = closed
        await system.stop(ref)
        assert not ref.alive


# -- re-entrant calls ------------------------------------------------------------------------------


class TurnsOnItself(Agent):
    """Calls its own ref, stops itself, or answers a call twice, as it is asked; keeps the
    error each raised."""

    def __init__(self, errors: list[MessagingError]) -> None:
        self.errors = errors

    async def handle_call(self, message: str, ctx: Context) -> Any:
        try:
            if message == "call self":
                await ctx.self.call("anything")
            elif message == "stop self":
                await ctx.system.stop(ctx.self)
            else:
                caller = ctx.caller
                assert caller is not None
                caller.reply("first")
                caller.reply("second")
        except MessagingError as error:
            self.errors.append(error)
        return "first"


class Partner(Agent):
    """Calls its partner while handling a call: two partners calling each other deadlock."""

    def __init__(self, partner: list[AgentRef]) -> None:
        self.partner = partner

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if message == "ping":
            return "pong"
        return await self.partner[0].call("ask back", timeout=5.0)


class TestReentrantCalls:
    @pytest.mark.parametrize(
        ("request_", "error"),
        [("call self", CallToSelf), ("stop self", CallToSelf), ("answer twice", ReplyAlreadySent)],
    )
    async def test_a_handler_turning_on_itself_gets_a_typed_error(
        self, system: MessageSystem, request_: str, error: type[MessagingError]
    ) -> None:
        """Calling or stopping itself, or answering twice, raises at once inside the handler;
        the caller still gets its one answer."""
        errors: list[MessagingError] = []
        agent = await system.spawn(TurnsOnItself, errors)
        healthy = await system.spawn(Echo)
        assert await agent.call(request_, timeout=1.0) == "first"
        assert [type(raised) for raised in errors] == [error]
        await assert_still_serving(system, healthy)

    async def test_two_agents_calling_each_other_time_out_without_hanging(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call cycle ends with ``CallTimeout`` at the outer deadline; both agents serve on."""
        first_partner: list[AgentRef] = []
        second_partner: list[AgentRef] = []
        first = await system.spawn(Partner, first_partner)
        second = await system.spawn(Partner, second_partner)
        first_partner.append(second)
        second_partner.append(first)
        started = trio.current_time()
        with pytest.raises(CallTimeout):
            await first.call("start", timeout=2.0)
        assert trio.current_time() - started == pytest.approx(2.0)
        await trio.sleep(10)
        assert [await first.call("ping"), await second.call("ping")] == ["pong", "pong"]


async def open_and_close(**config: Any) -> None:
    """Open a system with ``config`` and close it again."""
    async with open_message_system(MessageSystemConfig(**config)):
        await trio.lowlevel.checkpoint()


class TestMistakesRaiseTypedErrors:
    """The shrunk examples of the property tests above, and of probing the API they drive.

    Each test states the contract (DESIGN.md, "Bad input": a wrong value raises a clear, typed
    error from ``terraphim_actors.errors`` and never corrupts state).
    """

    async def test_subscribe_with_something_not_a_ref_raises_invalid_config(
        self,
        system: MessageSystem,
    ) -> None:
        """``system.subscribe("x")`` raises ``AttributeError: 'str' object has no attribute
        '_agent'``; ``system.stop("x")`` raises ``InvalidConfig`` for the same mistake."""
        with pytest.raises(InvalidConfig):
            system.subscribe("x")  # type: ignore[arg-type]

    async def test_subscribe_dead_letters_with_something_not_a_ref_raises_invalid_config(
        self,
        system: MessageSystem,
    ) -> None:
        """``system.subscribe_dead_letters("x")`` raises ``AttributeError`` too."""
        with pytest.raises(InvalidConfig):
            system.subscribe_dead_letters("x")  # type: ignore[arg-type]

    async def test_looking_up_an_unhashable_name_raises_a_typed_error(
        self, system: MessageSystem
    ) -> None:
        """``system.ref([1])`` raises ``TypeError: unhashable type: 'list'``."""
        with pytest.raises(MessagingError):
            system.ref([1])  # type: ignore[arg-type]

    async def test_an_envelope_with_an_unhashable_recipient_raises_a_typed_error(
        self,
        system: MessageSystem,
    ) -> None:
        """``send_message`` of an envelope addressed to ``[5]`` raises ``TypeError: unhashable
        type: 'list'`` from the registry lookup."""
        with pytest.raises(MessagingError):
            await system.send_message(cast(None, "x", recipient=[5]))  # type: ignore[arg-type]

    async def test_a_call_to_a_recipient_neither_id_nor_name_raises_a_typed_error(
        self,
        system: MessageSystem,
    ) -> None:
        """A call addressed to ``3.5`` was retried as a missing recipient, and giving up on it
        built ``DeliveryFailed(f"{envelope!r} ...")``, whose ``repr`` of the recipient raised
        ``AttributeError`` out of ``send_message``: it is refused as it is built."""
        with pytest.raises(MessagingError):
            call(None, "x", 5.0, recipient=3.5)  # type: ignore[arg-type]

    async def test_a_cast_to_a_recipient_neither_id_nor_name_is_refused_at_once(
        self,
        system: MessageSystem,
    ) -> None:
        """``send_message(cast(None, "x", recipient=5))`` is accepted, retried as a missing name
        that may yet be spawned (no int ever is), and becomes a dead letter whose ``repr`` raises
        ``AttributeError``: the bad address should be refused when it is sent."""
        with pytest.raises(MessagingError):
            await system.send_message(cast(None, "x", recipient=5))  # type: ignore[arg-type]

    async def test_selective_receive_with_no_predicate_raises_invalid_config(self) -> None:
        """``mailbox.receive_matching(3)`` raises ``TypeError: 'int' object is not callable``
        once a message is waiting; ``receive_timeout(-1)`` raises ``InvalidConfig``."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(cast(None, "waiting"))
        with pytest.raises(InvalidConfig):
            await mailbox.receive_matching(3)  # type: ignore[arg-type]

    async def test_a_dead_letter_capacity_beyond_ssize_t_raises_invalid_config(self) -> None:
        """``MessageSystemConfig(dead_letter_capacity=2**63)`` passes its validator, then
        ``open_message_system`` fails with ``OverflowError: Python int too large to convert to C
        ssize_t`` (from ``deque(maxlen=...)``) inside an ``ExceptionGroup``."""
        with pytest.raises(InvalidConfig):
            await open_and_close(dead_letter_capacity=2**63)

    async def test_spawn_pool_with_a_bad_intensity_raises_invalid_config(
        self,
        system: MessageSystem,
    ) -> None:
        """``spawn_pool`` documents ``InvalidConfig`` for an argument out of range, but
        ``max_restarts=-1`` (or ``max_seconds=0``) raises ``supervisor.InvalidSpec``, which an
        ``except InvalidConfig`` does not catch."""
        with pytest.raises(InvalidConfig):
            await system.spawn_pool(Echo, size=1, max_restarts=-1)


# -- refused values are quoted bounded ------------------------------------------------------------


class Unprintable:
    """A value whose repr raises: quoting it must not replace the error being reported."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


#: A value with a repr of about 700,000 characters.
HUGE_VALUE = list(range(100_000))


@attrs.define
class Payload:
    """A payload type to register under a bad tag."""

    value: int


def _wrap_agent(value: Any) -> Any:
    from terraphim_actors.testing import FaultInjector

    return FaultInjector().wrap_agent(value)


def _probe(value: Any) -> Any:
    from terraphim_actors.testing import TestProbe

    return TestProbe(reply=value)


def _cluster(**fields: Any) -> Any:
    from terraphim_actors.cluster import ClusterConfig

    return ClusterConfig(
        **{"servers": ["nats://127.0.0.1:4222"], "cluster": "c", "node": "n"} | fields
    )


def _journal(value: Any) -> Any:
    from terraphim_actors.journal import SqliteJournal

    return SqliteJournal("unused.db", synchronous=value)


#: Checks made without a system: a refused value, and what is called with it.
REFUSED_WITHOUT_A_SYSTEM: dict[str, Callable[[Any], object]] = {
    "MessageSystemConfig(instruments=[bad])": lambda v: MessageSystemConfig(instruments=[v]),
    "MessageSystemConfig(instruments=bad)": lambda v: MessageSystemConfig(instruments=v),
    "MessageSystemConfig(journal=bad)": lambda v: MessageSystemConfig(journal=v),
    "MessageSystemConfig(cluster=bad)": lambda v: MessageSystemConfig(cluster=v),
    "register_payload(bad)": lambda v: terraphim_actors.register_payload(v),
    "register_payload(tag=bad)": lambda v: terraphim_actors.register_payload(Payload, tag=v),
    "MessageOptions(priority=bad)": lambda v: MessageOptions(priority=v),
    "FaultInjector().wrap_agent(bad)": _wrap_agent,
    "TestProbe(reply=bad)": _probe,
    "ClusterConfig(servers=[bad])": lambda v: _cluster(servers=[v]),
    "ClusterConfig(node=bad)": lambda v: _cluster(node=v),
    "SqliteJournal(synchronous=bad)": _journal,
}

#: Checks of a running system's API: a refused value, and what is awaited with it.
REFUSED_BY_A_SYSTEM: dict[str, Callable[[MessageSystem, AgentRef, Any], Awaitable[object]]] = {
    "ref.cast(priority=bad)": lambda s, r, v: r.cast("x", priority=v),
    "ref.call(priority=bad)": lambda s, r, v: r.call("x", priority=v),
    "spawn(bad)": lambda s, r, v: s.spawn(v),
    "spawn(name=bad)": lambda s, r, v: s.spawn(Echo, name=v),
    "spawn_pool(key=bad)": lambda s, r, v: s.spawn_pool(Echo, size=1, key=v),
    "whereis(bad)": lambda s, r, v: _awaitable(s.whereis, v),
    "ref(bad)": lambda s, r, v: _awaitable(s.ref, v),
    "send_message(recipient=bad)": lambda s, r, v: s.send_message(cast(None, "x", recipient=v)),
    "send_message(options=bad)": lambda s, r, v: s.send_message(
        cast(None, "x", recipient="healthy").evolve(options=v)
    ),
    "receive_matching(bad)": lambda s, r, v: _receive_matching(v),
}


async def _awaitable(function: Callable[[Any], object], value: Any) -> object:
    await trio.lowlevel.checkpoint()
    return function(value)


async def _receive_matching(value: Any) -> object:
    mailbox = Mailbox(AgentId())
    mailbox.send_nowait(cast(None, "waiting"))
    return await mailbox.receive_matching(value)


def _short(error: BaseException) -> None:
    assert len(str(error)) < 1_000, str(error)[:300]


class TestRefusedValuesAreQuotedBounded:
    """README, Error handling: errors quote values "through a bounded repr: at most 200
    characters, <unprintable TypeName> when the repr raises". A check that quoted a refused
    value raw raised the repr's own error instead of the typed one, or a message of any size."""

    @pytest.mark.parametrize("value", [Unprintable(), HUGE_VALUE], ids=["unprintable", "huge"])
    @pytest.mark.parametrize("check", list(REFUSED_WITHOUT_A_SYSTEM))
    def test_a_check_without_a_system(self, check: str, value: Any) -> None:
        with pytest.raises(MessagingError) as caught:
            REFUSED_WITHOUT_A_SYSTEM[check](value)
        _short(caught.value)

    @pytest.mark.parametrize("value", [Unprintable(), HUGE_VALUE], ids=["unprintable", "huge"])
    @pytest.mark.parametrize("check", list(REFUSED_BY_A_SYSTEM))
    async def test_a_check_of_the_systems_api(
        self, system: MessageSystem, check: str, value: Any
    ) -> None:
        healthy = await system.spawn(Echo, name="healthy")
        with trio.fail_after(HANG), pytest.raises(MessagingError) as caught:
            await REFUSED_BY_A_SYSTEM[check](system, healthy, value)
        _short(caught.value)
        await assert_still_serving(system, healthy)
