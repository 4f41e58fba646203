"""Delivery guarantees: retries with backoff (after a crash, a full mailbox, a missing
recipient), at-most-once, calls, expiry, exactly-once dedup, statistics and dead letters."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from agents import Recorder, Runner, Silent, busy_for, call_and_keep, defer_into, until

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetter,
    DeadLetterReason,
    DedupWindow,
    DeferredReply,
    DeliveryConfig,
    DeliveryGuarantee,
    DeliveryStats,
    Directive,
    Down,
    Envelope,
    MailboxConfig,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    ReplyHandle,
    RestartIntensityExceeded,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors._core.checks import MAX_COUNT, MAX_FACTOR, MAX_SECONDS
from terraphim_actors.errors import (
    AgentNotFound,
    AgentStopped,
    CallFailed,
    CallTimeout,
    DeliveryFailed,
    InvalidConfig,
    MailboxFull,
    MessagingError,
    NonRetryable,
    SystemClosed,
)

#: A bounded mailbox of one slot that refuses what does not fit.
ONE_SLOT_REJECT = MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT)

#: Options of a message delivered exactly once.
EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)

#: Options of a message that stays worth delivering for longer than the default 30 s, so that
#: a long retry schedule is not cut short by its expiry.
LONG_LIVED = MessageOptions(timeout=1000.0)

#: ``Flaky`` crashes on every message.
ALWAYS = math.inf


class Boom(Exception):
    """What a flaky handler raises."""


@attrs.frozen(eq=False)
class Run:
    """One run of a ``Flaky`` handler: which instance ran it, on what, and when."""

    instance: Agent
    payload: Any
    at: float


class Flaky(Agent):
    """Records every cast or call it handles in ``runs`` (shared by all its instances) and
    crashes with ``Boom`` while fewer than ``crashes`` runs have been recorded (a call that
    does not crash replies with the number of runs so far)."""

    def __init__(self, runs: list[Run], crashes: float) -> None:
        self.runs = runs
        self.crashes = crashes

    def _run(self, message: Any) -> int:
        self.runs.append(Run(self, message, trio.current_time()))
        if len(self.runs) <= self.crashes:
            raise Boom(f"run {len(self.runs)} of {message!r}")
        return len(self.runs)

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self._run(message)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return self._run(message)


def settings(
    *,
    max_restarts: int = 100,
    circuit_breaker: CircuitBreakerConfig | None = None,
    **delivery: Any,
) -> MessageSystemConfig:
    """A system config with ``DeliveryConfig(**delivery)``, no jitter unless given, no circuit
    breaker (so that only the delivery layer decides), and a root allowing many restarts."""
    delivery.setdefault("jitter", 0.0)
    return MessageSystemConfig(
        max_restarts=max_restarts,
        delivery=DeliveryConfig(**delivery),
        router=RouterConfig(circuit_breaker=circuit_breaker),
    )


def gaps(runs: list[Run]) -> list[float]:
    """Seconds between one run and the next."""
    return [later.at - earlier.at for earlier, later in itertools.pairwise(runs)]


async def spawn_full(system: MessageSystem) -> tuple[AgentRef, trio.Event]:
    """A ``Runner`` busy until the event is set, with its one-slot ``REJECT`` mailbox full."""
    release = trio.Event()
    ref = await system.spawn(Runner, mailbox=ONE_SLOT_REJECT)
    await ref.cast(until(release))
    await trio.testing.wait_all_tasks_blocked()
    await ref.cast(lambda ctx: None)
    return ref, release


def reasons(system: MessageSystem) -> list[DeadLetterReason]:
    """The reasons of the kept dead letters, oldest first."""
    return [letter.reason for letter in system.dead_letters]


class TestDeliveryConfig:
    def test_defaults(self) -> None:
        """At least once, 3 retries, 0.1 s doubling up to 30 s, 10 % jitter."""
        config = DeliveryConfig()
        assert config.guarantee is DeliveryGuarantee.AT_LEAST_ONCE
        assert config.max_retries == 3
        assert config.retry_delay == 0.1
        assert config.retry_backoff_multiplier == 2.0
        assert config.max_retry_delay == 30.0
        assert config.jitter == 0.1

    async def test_options_given_per_message_are_filled_in_from_the_config(self) -> None:
        """Options that leave fields to the system get the system's values; equal options
        resolve to one shared, filled-in object, so a sender reusing them pays once."""
        config = MessageSystemConfig(delivery=DeliveryConfig(max_retries=7, retry_delay=0.25))
        async with open_message_system(config) as system:
            first = system.delivery.resolve(EXACTLY_ONCE)
            again = system.delivery.resolve(
                MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
            )
        assert first.guarantee is DeliveryGuarantee.EXACTLY_ONCE
        assert (first.max_retries, first.retry_delay) == (7, 0.25)
        assert again is first

    def test_a_system_delivers_by_the_default_config(self) -> None:
        """A system configured without a delivery config gets the defaults."""
        assert MessageSystemConfig().delivery == DeliveryConfig()

    def test_zero_retries_delay_and_jitter_and_multiplier_one_are_accepted(self) -> None:
        """No retries, no delay, no jitter and a constant delay are valid choices."""
        config = DeliveryConfig(
            max_retries=0, retry_delay=0, jitter=0.0, retry_backoff_multiplier=1
        )
        assert (config.max_retries, config.retry_delay, config.jitter) == (0, 0, 0.0)
        assert config.retry_backoff_multiplier == 1

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("guarantee", "at-least-once"),
            ("guarantee", None),
            ("max_retries", -1),
            ("max_retries", 1.5),
            ("max_retries", math.nan),
            ("max_retries", True),
            ("max_retries", "3"),
            ("retry_delay", -0.1),
            ("retry_delay", math.nan),
            ("retry_delay", True),
            ("retry_delay", "0.1"),
            ("retry_delay", None),
            ("retry_backoff_multiplier", 0.5),
            ("retry_backoff_multiplier", 0),
            ("retry_backoff_multiplier", -2.0),
            ("retry_backoff_multiplier", math.nan),
            ("retry_backoff_multiplier", True),
            ("retry_backoff_multiplier", "2"),
            ("max_retry_delay", 0),
            ("max_retry_delay", -1.0),
            ("max_retry_delay", math.nan),
            ("max_retry_delay", False),
            ("max_retry_delay", "30"),
            ("jitter", -0.1),
            ("jitter", math.nan),
            ("jitter", True),
            ("jitter", "0.1"),
            ("dedup_window", 300),
            ("seed", -1),
            ("seed", 1.5),
            ("seed", True),
        ],
    )
    def test_bad_value_raises_invalid_config(self, field: str, value: Any) -> None:
        """A negative, NaN, bool, wrongly typed (or, for the multiplier, < 1) value is refused
        with ``InvalidConfig`` naming the field."""
        with pytest.raises(InvalidConfig, match=field):
            DeliveryConfig(**{field: value})

    @pytest.mark.parametrize(
        ("field", "value", "bound"),
        [
            ("retry_backoff_multiplier", 10**400, "1000"),  # overflowed at the second retry
            ("retry_backoff_multiplier", math.inf, "1000"),
            ("retry_backoff_multiplier", MAX_FACTOR + 1, "1000"),
            ("jitter", math.inf, "1000"),  # with retry_delay=0, scheduled retries at NaN
            ("jitter", MAX_FACTOR + 1, "1000"),
            ("retry_delay", math.inf, "1e+09"),
            ("retry_delay", MAX_SECONDS * 2, "1e+09"),
            ("max_retry_delay", 10**400, "1e+09"),
            ("max_retries", MAX_COUNT + 1, str(MAX_COUNT)),
        ],
    )
    def test_a_value_beyond_its_bound_is_refused_naming_the_bound(
        self, field: str, value: Any, bound: str
    ) -> None:
        """Times stop at ``MAX_SECONDS``, factors at ``MAX_FACTOR``, counts at ``MAX_COUNT``,
        so that what is accepted keeps every due time finite; the error says the bound, in a
        message of a few hundred characters however large the value."""
        with pytest.raises(InvalidConfig, match=field) as caught:
            DeliveryConfig(**{field: value})
        assert bound in str(caught.value)
        assert len(str(caught.value)) < 300

    def test_the_largest_values_are_accepted(self) -> None:
        """The bounds themselves are valid choices."""
        config = DeliveryConfig(
            max_retries=MAX_COUNT,
            retry_delay=MAX_SECONDS,
            retry_backoff_multiplier=MAX_FACTOR,
            max_retry_delay=MAX_SECONDS,
            jitter=MAX_FACTOR,
        )
        assert config.retry_backoff_multiplier == MAX_FACTOR

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_messages", 0),
            ("max_messages", 2.0),
            ("max_messages", True),
            ("max_age", 0),
            ("max_age", -1.0),
            ("max_age", math.nan),
            ("max_age", True),
        ],
    )
    def test_bad_dedup_window_raises_invalid_config(self, field: str, value: Any) -> None:
        """A dedup window must hold at least one id for a positive number of seconds."""
        with pytest.raises(InvalidConfig, match=field):
            DedupWindow(**{field: value})


class TestRetryAfterCrash:
    async def test_crashed_cast_is_handled_again_by_the_restarted_agent(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The supervisor restarts the agent, and its new instance handles the same cast."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, 1)
            await ref.cast("job")
            await trio.sleep(1.0)
            assert [run.payload for run in runs] == ["job", "job"]
            assert runs[1].instance is not runs[0].instance
            assert system.get_stats()[0].agent_restarts == 1
            assert system.dead_letters == ()

    async def test_cast_that_always_crashes_runs_max_retries_plus_one_times(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With ``max_retries=3`` the handler runs 4 times, then never again."""
        runs: list[Run] = []
        async with open_message_system(settings(max_retries=3)) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(60.0)
            assert len(runs) == 4

    async def test_cast_that_always_crashes_becomes_a_retries_exhausted_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once its retries ran out the cast is a RETRIES_EXHAUSTED letter naming the crash."""
        runs: list[Run] = []
        async with open_message_system(settings(max_retries=3)) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(60.0)
            [letter] = system.dead_letters
            assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
            assert letter.envelope.payload == "job"
            assert DeadLetterReason.HANDLER_CRASHED.value in letter.detail
            assert system.delivery.get_retry_candidates() == ()

    async def test_with_no_retries_the_first_crash_is_final(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``max_retries=0``: one run, then a RETRIES_EXHAUSTED letter."""
        runs: list[Run] = []
        async with open_message_system(settings(max_retries=0)) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(60.0)
            assert len(runs) == 1
            assert reasons(system) == [DeadLetterReason.RETRIES_EXHAUSTED]

    async def test_crashed_info_is_retried_too(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An info whose handler crashed is handled again after the restart."""
        inbox: list[Any] = []
        crashes: list[None] = []

        class FlakyInbox(Runner):
            async def handle_info(self, message: Any, ctx: Context) -> None:
                if not crashes:
                    crashes.append(None)
                    raise Boom("first info")
                await super().handle_info(message, ctx)

        async with open_message_system(settings()) as system:
            ref = await system.spawn(FlakyInbox, inbox)
            await ref.info("note")
            await trio.sleep(1.0)
            assert crashes == [None]
            assert inbox == ["note"]

    async def test_default_root_intensity_allows_the_default_retries(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With every default (5 restarts in 60 s), a message crashing 4 times is simply
        dead-lettered: the system keeps running."""
        runs: list[Run] = []
        async with open_message_system() as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(10.0)
            assert len(runs) == 4
            assert reasons(system) == [DeadLetterReason.RETRIES_EXHAUSTED]
            assert ref.alive


class TestBackoff:
    async def test_nth_retry_waits_retry_delay_times_multiplier_to_the_n_minus_one(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Without jitter, retry n comes ``retry_delay * multiplier ** (n - 1)`` after the
        failure before it."""
        runs: list[Run] = []
        config = settings(max_retries=4, retry_delay=1.0, retry_backoff_multiplier=3.0)
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job", options=LONG_LIVED)
            await trio.sleep(100.0)
        assert gaps(runs) == pytest.approx([1.0, 3.0, 9.0, 27.0])

    async def test_first_retry_waits_the_default_retry_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With the default schedule (no jitter), retries come 0.1, 0.2 and 0.4 s apart."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(10.0)
        assert gaps(runs) == pytest.approx([0.1, 0.2, 0.4])

    async def test_retry_delay_is_capped_at_max_retry_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The delay grows no further than ``max_retry_delay``."""
        runs: list[Run] = []
        config = settings(
            max_retries=4, retry_delay=1.0, retry_backoff_multiplier=10.0, max_retry_delay=5.0
        )
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(100.0)
        assert gaps(runs) == pytest.approx([1.0, 5.0, 5.0, 5.0])

    async def test_multiplier_one_keeps_the_delay_constant(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``retry_backoff_multiplier=1`` retries at a constant pace."""
        runs: list[Run] = []
        config = settings(retry_delay=2.0, retry_backoff_multiplier=1.0)
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(100.0)
        assert gaps(runs) == pytest.approx([2.0, 2.0, 2.0])

    @pytest.mark.parametrize("multiplier", [MAX_FACTOR, int(MAX_FACTOR)])
    async def test_the_largest_multiplier_reaches_the_cap_and_keeps_retrying(
        self, autojump_clock: trio.testing.MockClock, multiplier: float
    ) -> None:
        """The largest multiplier (a float, or an int whose powers outgrow any float) over
        many retries: the delay stays at the cap, the router keeps running, and the message
        is handled in the end."""
        runs: list[Run] = []
        config = settings(
            max_retries=MAX_COUNT,
            retry_delay=1.0,
            retry_backoff_multiplier=multiplier,
            max_retry_delay=5.0,
        )
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, 200)  # past where 1000.0 ** n overflows
            await ref.cast("job", options=MessageOptions(timeout=MAX_SECONDS))
            await trio.sleep(2000.0)
            assert system.delivery.get_stats().pending == 0
        assert len(runs) == 201
        assert gaps(runs) == pytest.approx([1.0] + [5.0] * 199)

    async def test_no_retry_delay_with_the_largest_jitter_retries_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``retry_delay=0`` with ``jitter=MAX_FACTOR``: each retry is due at once (jitter is a
        fraction of nothing), never at NaN."""
        runs: list[Run] = []
        config = settings(max_retries=3, retry_delay=0, jitter=MAX_FACTOR)
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, 2)
            await ref.cast("job")
            await trio.sleep(1.0)
            assert system.delivery.get_stats().pending == 0
        assert gaps(runs) == [0.0, 0.0]

    async def test_jitter_adds_at_most_its_fraction_of_the_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With jitter j, each delay lies in ``[base, base * (1 + j)]``, and is not always
        the base."""
        runs: list[Run] = []
        config = settings(max_retries=6, retry_delay=1.0, jitter=0.5, seed=7)
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job", options=LONG_LIVED)
            await trio.sleep(500.0)
        bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
        measured = gaps(runs)
        assert len(measured) == len(bases)
        for gap, base in zip(measured, bases, strict=True):
            assert base <= gap <= base * 1.5
        assert measured != pytest.approx(bases)

    async def test_message_options_override_retry_delay_and_max_retries(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A message's own ``retry_delay`` and ``max_retries`` win over the system's."""
        runs: list[Run] = []
        config = settings(max_retries=5, retry_delay=10.0)
        async with open_message_system(config) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job", options=MessageOptions(retry_delay=0.5, max_retries=2))
            await trio.sleep(500.0)
            assert gaps(runs) == pytest.approx([0.5, 1.0])
            assert reasons(system) == [DeadLetterReason.RETRIES_EXHAUSTED]

    async def test_message_options_can_turn_retries_off(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``MessageOptions(max_retries=0)``: a crash is final for that message alone."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("once", options=MessageOptions(max_retries=0))
            await trio.sleep(60.0)
            assert [run.payload for run in runs] == ["once"]

    async def test_message_options_guarantee_overrides_the_systems(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An at-most-once message in an at-least-once system is not redelivered."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            options = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
            await ref.cast("once", options=options)
            await trio.sleep(60.0)
            assert len(runs) == 1
            assert reasons(system) == [DeadLetterReason.HANDLER_CRASHED]


class TestRetryCandidates:
    async def test_waiting_message_shows_attempt_due_time_and_last_failure(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a crash the message waits as attempt 1, due ``retry_delay`` after it."""
        runs: list[Run] = []
        async with open_message_system(settings(retry_delay=2.0)) as system:
            ref = await system.spawn(Flaky, runs, 1)
            await ref.cast("job")
            await trio.testing.wait_all_tasks_blocked()
            [candidate] = system.delivery.get_retry_candidates()
            assert candidate.envelope.payload == "job"
            assert candidate.attempt == 1
            assert candidate.due == pytest.approx(runs[0].at + 2.0)
            assert candidate.last_failure is DeadLetterReason.HANDLER_CRASHED

    async def test_second_wait_is_attempt_two_with_the_longer_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After the first retry crashed too, the message waits as attempt 2, twice as long."""
        runs: list[Run] = []
        async with open_message_system(settings(retry_delay=2.0)) as system:
            ref = await system.spawn(Flaky, runs, 2)
            await ref.cast("job")
            await trio.sleep(2.5)
            [candidate] = system.delivery.get_retry_candidates()
            assert candidate.attempt == 2
            assert candidate.due == pytest.approx(runs[1].at + 4.0)

    async def test_redelivered_message_is_no_longer_a_candidate(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once its retry has run, nothing waits."""
        runs: list[Run] = []
        async with open_message_system(settings(retry_delay=2.0)) as system:
            ref = await system.spawn(Flaky, runs, 1)
            await ref.cast("job")
            await trio.sleep(3.0)
            assert len(runs) == 2
            assert system.delivery.get_retry_candidates() == ()

    async def test_candidates_are_listed_soonest_first(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two waiting messages are listed by due time, not by when they failed."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("late", options=MessageOptions(retry_delay=5.0))
            await ref.cast("soon", options=MessageOptions(retry_delay=1.0))
            await trio.testing.wait_all_tasks_blocked()
            candidates = system.delivery.get_retry_candidates()
            assert [candidate.envelope.payload for candidate in candidates] == ["soon", "late"]

    async def test_missing_recipient_is_the_last_failure(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A message to a name nobody has waits with last_failure NOT_FOUND."""
        await system.send_message(cast(None, "hello", recipient="nobody"))
        [candidate] = system.delivery.get_retry_candidates()
        assert candidate.last_failure is DeadLetterReason.NOT_FOUND
        assert candidate.attempt == 1


class TestAtMostOnce:
    @pytest.mark.at_most_once
    async def test_crashing_cast_is_never_redelivered(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The handler ran once, however long we wait; nothing waits for a retry."""
        runs: list[Run] = []
        ref = await system.spawn(Flaky, runs, ALWAYS)
        await ref.cast("job")
        await trio.sleep(60.0)
        assert len(runs) == 1
        assert system.delivery.get_retry_candidates() == ()

    @pytest.mark.at_most_once
    async def test_crashing_cast_becomes_a_handler_crashed_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The cast whose handler crashed is filed as HANDLER_CRASHED."""
        ref = await system.spawn(Flaky, [], ALWAYS)
        await ref.cast("job")
        await trio.sleep(1.0)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.HANDLER_CRASHED
        assert letter.envelope.payload == "job"

    @pytest.mark.at_most_once
    async def test_cast_to_full_rejecting_mailbox_raises_mailbox_full(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The sender hears of the full mailbox at once."""
        ref, release = await spawn_full(system)
        with pytest.raises(MailboxFull):
            await ref.cast(lambda ctx: None)
        release.set()

    @pytest.mark.at_most_once
    async def test_cast_refused_by_a_full_mailbox_is_a_mailbox_full_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The refused cast is filed as MAILBOX_FULL and never handled later."""
        ran: list[None] = []
        ref, release = await spawn_full(system)

        def refused(ctx: Context) -> None:
            ran.append(None)

        with pytest.raises(MailboxFull):
            await ref.cast(refused)
        release.set()
        await trio.sleep(60.0)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.MAILBOX_FULL
        assert letter.envelope.payload is refused
        assert ran == []


class TestFullMailbox:
    async def test_cast_to_full_rejecting_mailbox_does_not_raise(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once, a refused cast returns normally: it will be retried."""
        ref, release = await spawn_full(system)
        await ref.cast(lambda ctx: None)
        assert len(system.delivery.get_retry_candidates()) == 1
        release.set()

    async def test_cast_to_full_mailbox_is_delivered_once_there_is_room(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retry puts the cast in the mailbox after the agent made room."""
        got: list[str] = []
        ref, release = await spawn_full(system)
        await ref.cast(lambda ctx: got.append("late"))
        await trio.sleep(0.2)  # the first retry has come and found the mailbox still full
        assert got == []
        assert system.delivery.get_stats().retried == 2
        release.set()
        await trio.sleep(5.0)
        assert got == ["late"]
        assert system.dead_letters == ()

    async def test_cast_to_mailbox_that_stays_full_is_dead_lettered_retries_exhausted(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """If there is never room, the cast ends RETRIES_EXHAUSTED, last failure mailbox full."""
        ref, release = await spawn_full(system)

        def never(ctx: Context) -> None:
            raise AssertionError("a cast refused 4 times ran")

        await ref.cast(never)
        await trio.sleep(10.0)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
        assert letter.envelope.payload is never
        assert DeadLetterReason.MAILBOX_FULL.value in letter.detail
        release.set()


class TestMissingRecipient:
    async def test_message_to_a_name_spawned_before_retries_run_out_is_delivered(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast to a name nobody has yet reaches the agent spawned under it later."""
        log: list[tuple[str, Any]] = []
        await system.send_message(cast(None, "hello", recipient="later"))
        await trio.sleep(0.15)  # the first retry found nobody either
        await system.spawn(Recorder, log, name="later")
        await trio.sleep(5.0)
        assert log == [("cast", "hello")]
        assert system.dead_letters == ()

    async def test_message_to_a_name_never_spawned_is_dead_lettered_retries_exhausted(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """If nobody ever takes the name, the cast ends RETRIES_EXHAUSTED, last failure
        not found."""
        await system.send_message(cast(None, "hello", recipient="nobody"))
        await trio.sleep(10.0)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
        assert DeadLetterReason.NOT_FOUND.value in letter.detail

    @pytest.mark.at_most_once
    async def test_at_most_once_message_to_a_missing_name_raises_agent_not_found(
        self, system: MessageSystem
    ) -> None:
        """Without retries the sender hears at once that nobody has that name."""
        with pytest.raises(AgentNotFound):
            await system.send_message(cast(None, "hello", recipient="later"))

    @pytest.mark.at_most_once
    async def test_at_most_once_message_to_a_missing_name_is_a_not_found_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """It is filed as NOT_FOUND, and an agent spawned later under the name never gets it."""
        log: list[tuple[str, Any]] = []
        with pytest.raises(AgentNotFound):
            await system.send_message(cast(None, "hello", recipient="later"))
        await system.spawn(Recorder, log, name="later")
        await trio.sleep(10.0)
        assert reasons(system) == [DeadLetterReason.NOT_FOUND]
        assert log == []


class TestStoppedRecipient:
    """An agent stopped for good refuses at once, however many sends it refuses: its circuit
    breaker does not count the refusals (its stop says nothing of its health), so it never
    answers for the stop."""

    @pytest.mark.parametrize(
        "guarantee",
        [pytest.param("at most once", marks=pytest.mark.at_most_once), "at least once"],
    )
    async def test_casts_are_dead_letters_at_once_however_many(
        self, system: MessageSystem, guarantee: str
    ) -> None:
        """Dropped quietly at most once, never waiting for a retry at least once."""
        ref = await system.spawn(Silent)
        await system.stop(ref)
        for number in range(10):
            await ref.cast(number)
        assert reasons(system) == [DeadLetterReason.AGENT_STOPPED] * 10
        assert system.delivery.get_stats().pending == 0


class TestCallRetries:
    async def test_error_in_handle_call_is_never_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once, the caller still gets ``CallFailed`` at once; the handler ran once."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            started = trio.current_time()
            with pytest.raises(CallFailed) as raised:
                await ref.call("job", timeout=30.0)
            assert trio.current_time() == started
            assert isinstance(raised.value.__cause__, Boom)
            await trio.sleep(60.0)
            assert len(runs) == 1
            assert system.delivery.get_retry_candidates() == ()
            assert system.dead_letters == ()

    async def test_call_to_full_mailbox_is_answered_once_room_frees(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The call is retried within its deadline and answered after the agent made room."""
        outcomes: list[Any] = []
        ref, release = await spawn_full(system)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            answer = functools.partial(call_and_keep, timeout=10.0)
            nursery.start_soon(answer, ref, lambda ctx: "answer", outcomes)
            await trio.sleep(0.5)
            assert outcomes == []
            release.set()
        assert outcomes == ["answer"]
        assert trio.current_time() - started < 10.0

    async def test_call_whose_retries_run_out_raises_delivery_failed_with_the_cause(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After ``max_retries`` refusals the caller gets ``DeliveryFailed`` from MailboxFull."""
        async with open_message_system(settings(max_retries=2, retry_delay=0.1)) as system:
            ref, release = await spawn_full(system)
            started = trio.current_time()
            with pytest.raises(DeliveryFailed) as raised:
                await ref.call(lambda ctx: "never", timeout=30.0)
            assert isinstance(raised.value.__cause__, MailboxFull)
            assert trio.current_time() - started == pytest.approx(0.1 + 0.2)
            release.set()

    async def test_call_whose_next_retry_is_past_its_deadline_fails_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """When the next try would come after the caller's deadline, the call fails then and
        there with ``DeliveryFailed`` (caused by the last failure), instead of waiting it out."""
        async with open_message_system(settings(max_retries=10, retry_delay=1.0)) as system:
            ref, release = await spawn_full(system)
            started = trio.current_time()
            with pytest.raises(DeliveryFailed) as raised:
                await ref.call(lambda ctx: "never", timeout=2.5)
            assert trio.current_time() - started == pytest.approx(1.0)  # tries at 0 and 1 s
            assert isinstance(raised.value.__cause__, MailboxFull)
            release.set()

    async def test_call_whose_caller_gives_up_during_retries_is_an_expired_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The call its caller gave up on before delivery is filed as EXPIRED, never handled."""
        ran: list[None] = []
        async with open_message_system(settings(max_retries=10, retry_delay=1.0)) as system:
            ref, release = await spawn_full(system)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.call, lambda ctx: ran.append(None), 5.0)
                await trio.sleep(1.5)  # during its retries, not at a deadline it knows of
                nursery.cancel_scope.cancel()
            release.set()
            await trio.sleep(60.0)
            assert reasons(system) == [DeadLetterReason.EXPIRED]
            assert ran == []
            assert system.delivery.get_stats().pending == 0

    async def test_call_to_a_name_spawned_during_its_retries_is_answered(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call sent to a name nobody has yet reaches the agent spawned under it."""
        envelope, handle = call(None, "ping", 10.0, recipient="later")

        async def spawn_later() -> None:
            await trio.sleep(0.15)
            await system.spawn(Recorder, [], name="later")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawn_later)
            await system.send_message(envelope)
        assert await handle == "ping"


class TestExpiry:
    async def test_message_waiting_past_its_timeout_becomes_an_expired_dead_letter(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast stuck behind a busy handler longer than its timeout is not handled but
        filed as EXPIRED (and not retried)."""
        got: list[str] = []
        ref = await system.spawn(Runner)
        await ref.cast(busy_for(5.0))
        await ref.cast(lambda ctx: got.append("stale"), options=MessageOptions(timeout=1.0))
        await trio.sleep(60.0)
        assert got == []
        assert reasons(system) == [DeadLetterReason.EXPIRED]
        assert system.delivery.get_retry_candidates() == ()

    async def test_message_handled_within_its_timeout_is_not_expired(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast that waits less than its timeout is handled as usual."""
        got: list[str] = []
        ref = await system.spawn(Runner)
        await ref.cast(busy_for(0.5))
        await ref.cast(lambda ctx: got.append("fresh"), options=MessageOptions(timeout=1.0))
        await trio.sleep(60.0)
        assert got == ["fresh"]
        assert system.dead_letters == ()

    async def test_message_whose_timeout_passes_before_its_retry_expires(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A crashed cast due for a retry after its timeout is filed as EXPIRED instead."""
        runs: list[Run] = []
        async with open_message_system(settings(retry_delay=5.0)) as system:
            ref = await system.spawn(Flaky, runs, 1)
            await ref.cast("job", options=MessageOptions(timeout=2.0))
            await trio.sleep(60.0)
            assert len(runs) == 1
            assert reasons(system) == [DeadLetterReason.EXPIRED]

    async def test_default_timeout_of_30_s_ends_a_long_retry_schedule_as_expired(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A retry that would come more than 30 s after the message was created (the default
        timeout) does not happen: the message is filed as EXPIRED."""
        runs: list[Run] = []
        async with open_message_system(settings(max_retries=10, retry_delay=1.0)) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.sleep(100.0)
            assert gaps(runs) == pytest.approx([1.0, 2.0, 4.0, 8.0])
            assert reasons(system) == [DeadLetterReason.EXPIRED]


class TestExactlyOnce:
    async def test_same_envelope_sent_twice_is_handled_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The second send of an exactly-once envelope is suppressed at the recipient."""
        log: list[tuple[str, Any]] = []
        await system.spawn(Recorder, log, name="ledger")
        envelope = cast(None, "pay", EXACTLY_ONCE, recipient="ledger")
        await system.send_message(envelope)
        await system.send_message(envelope)
        await trio.sleep(1.0)
        assert log == [("cast", "pay")]
        assert system.delivery.get_stats().duplicates_suppressed == 1
        assert system.dead_letters == ()

    async def test_a_copy_with_the_same_message_id_is_a_duplicate(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Dedup goes by message id: a copy of the envelope, sent later, is suppressed."""
        log: list[tuple[str, Any]] = []
        await system.spawn(Recorder, log, name="ledger")
        envelope = cast(None, "pay", EXACTLY_ONCE, recipient="ledger")
        await system.send_message(envelope)
        await trio.sleep(1.0)
        await system.send_message(envelope.evolve(attempt=0))
        await trio.sleep(1.0)
        assert log == [("cast", "pay")]

    async def test_at_least_once_resend_is_handled_again(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Without exactly-once, the same envelope sent twice is handled twice."""
        log: list[tuple[str, Any]] = []
        await system.spawn(Recorder, log, name="ledger")
        envelope = cast(None, "pay", recipient="ledger")
        await system.send_message(envelope)
        await system.send_message(envelope)
        await trio.sleep(1.0)
        assert log == [("cast", "pay"), ("cast", "pay")]
        assert system.delivery.get_stats().duplicates_suppressed == 0

    async def test_duplicate_call_gets_the_first_calls_reply(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A second call with the same message id is answered with the first reply, unhandled."""
        runs: list[Run] = []
        await system.spawn(Flaky, runs, 0, name="tally")
        first, first_reply = call(None, "count", 5.0, recipient="tally", options=EXACTLY_ONCE)
        await system.send_message(first)
        assert await first_reply == 1
        again, again_reply = call(None, "count", 5.0, recipient="tally", options=EXACTLY_ONCE)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply == 1
        assert len(runs) == 1

    async def test_duplicate_call_whose_first_reply_was_none_is_not_handled_again(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose handler returned ``None`` is remembered too: its duplicate gets
        ``None`` without running the handler again."""
        runs: list[None] = []

        def record(ctx: Context) -> None:
            runs.append(None)

        await system.spawn(Runner, name="ledger")
        first, first_reply = call(None, record, 5.0, recipient="ledger", options=EXACTLY_ONCE)
        await system.send_message(first)
        assert await first_reply is None
        again, again_reply = call(None, record, 5.0, recipient="ledger", options=EXACTLY_ONCE)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply is None
        assert runs == [None]
        assert system.delivery.get_stats().duplicates_suppressed == 1

    async def test_duplicate_of_a_call_answered_through_ctx_caller_gets_that_reply(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call its handler answered through ``ctx.caller`` (not deferred) has a known
        reply, which its duplicate gets."""

        def answer(ctx: Context) -> None:
            assert ctx.caller is not None
            ctx.caller.reply("early")

        await system.spawn(Runner, name="ledger")
        first, first_reply = call(None, answer, 5.0, recipient="ledger", options=EXACTLY_ONCE)
        await system.send_message(first)
        assert await first_reply == "early"
        again, again_reply = call(None, answer, 5.0, recipient="ledger", options=EXACTLY_ONCE)
        again = again.evolve(id=first.id)
        await system.send_message(again)
        assert await again_reply == "early"

    async def test_duplicate_within_max_age_is_suppressed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A duplicate arriving before ``max_age`` has passed is not handled."""
        log: list[tuple[str, Any]] = []
        async with open_message_system(settings(dedup_window=DedupWindow(max_age=10.0))) as system:
            await system.spawn(Recorder, log, name="ledger")
            envelope = cast(None, "pay", EXACTLY_ONCE, recipient="ledger")
            await system.send_message(envelope)
            await trio.sleep(9.5)
            await system.send_message(envelope)
            await trio.sleep(0.1)
            assert log == [("cast", "pay")]

    async def test_duplicate_after_max_age_is_handled_again(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The window forgets an id ``max_age`` seconds after it was handled."""
        log: list[tuple[str, Any]] = []
        async with open_message_system(settings(dedup_window=DedupWindow(max_age=10.0))) as system:
            await system.spawn(Recorder, log, name="ledger")
            envelope = cast(None, "pay", EXACTLY_ONCE, recipient="ledger")
            await system.send_message(envelope)
            await trio.sleep(10.5)
            await system.send_message(envelope)
            await trio.sleep(0.1)
            assert log == [("cast", "pay"), ("cast", "pay")]
            assert system.delivery.get_stats().duplicates_suppressed == 0

    async def test_window_remembers_up_to_max_messages_ids(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With ``max_messages=2``, one newer id does not push the first out."""
        log: list[tuple[str, Any]] = []
        async with open_message_system(
            settings(dedup_window=DedupWindow(max_messages=2))
        ) as system:
            await system.spawn(Recorder, log, name="ledger")
            first = cast(None, "a", EXACTLY_ONCE, recipient="ledger")
            await system.send_message(first)
            await system.send_message(cast(None, "b", EXACTLY_ONCE, recipient="ledger"))
            await system.send_message(first)
            await trio.sleep(1.0)
            assert [payload for _, payload in log] == ["a", "b"]

    async def test_duplicate_after_max_messages_newer_ids_is_handled_again(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With ``max_messages=2``, two newer ids push the first out of the window."""
        log: list[tuple[str, Any]] = []
        async with open_message_system(
            settings(dedup_window=DedupWindow(max_messages=2))
        ) as system:
            await system.spawn(Recorder, log, name="ledger")
            first = cast(None, "a", EXACTLY_ONCE, recipient="ledger")
            await system.send_message(first)
            for payload in ("b", "c"):
                await system.send_message(cast(None, payload, EXACTLY_ONCE, recipient="ledger"))
            await system.send_message(first)
            await trio.sleep(1.0)
            assert [payload for _, payload in log] == ["a", "b", "c", "a"]

    async def test_dedup_survives_a_restart_of_the_agent(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a crash and restart, the new instance still suppresses what the old one
        completed."""
        paid: list[None] = []

        def pay(ctx: Context) -> None:
            paid.append(None)

        def fail(ctx: Context) -> None:
            raise Boom("crash the agent")

        ref = await system.spawn(Runner, name="ledger")
        envelope = cast(None, pay, EXACTLY_ONCE, recipient="ledger")
        await system.send_message(envelope)
        with pytest.raises(CallFailed):
            await ref.call(fail)
        await trio.sleep(1.0)
        assert system.get_stats()[0].agent_restarts == 1
        await system.send_message(envelope)
        await trio.sleep(1.0)
        assert paid == [None]
        assert system.delivery.get_stats().duplicates_suppressed == 1

    async def test_exactly_once_message_whose_handler_crashed_is_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Dedup only remembers completed messages: a crashed one is handled again, once."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, runs, 1)
            await ref.cast("job", options=EXACTLY_ONCE)
            await trio.sleep(10.0)
            assert len(runs) == 2
            assert system.delivery.get_stats().acknowledged == 1


class TestExactlyOnceDeferredCalls:
    """Resends (same message id, ``send_message``) of an exactly-once call whose handler
    deferred its reply: the first caller has usually given up, and the answer may come before
    or after the resend, as a value or an error."""

    async def test_resend_arriving_before_the_deferred_answer_gets_it_once_given(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The resend waits for the answer, not for nothing: it gets it when it is given."""
        held: list[DeferredReply] = []
        await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            async with trio.open_nursery() as nursery:
                outcomes: list[Any] = []
                nursery.start_soon(keep_outcome, again_reply, outcomes)
                await trio.sleep(2.0)
                assert outcomes == []
                await held[0].reply("charged")
        assert outcomes == ["charged"]
        assert len(held) == 1

    async def test_resend_arriving_after_the_deferred_answer_gets_it(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An answer given after the first caller gave up is kept for the resend."""
        held: list[DeferredReply] = []
        await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            assert await held[0].reply("charged") is False  # its own caller is gone
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            assert await outcome_of(again_reply) == "charged"
        assert len(held) == 1

    async def test_resend_of_a_deferred_call_answered_with_an_error_gets_that_error(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``fail`` is an answer too: the resend raises ``CallFailed`` from the same error."""
        held: list[DeferredReply] = []
        declined = Boom("card declined")
        await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            await trio.testing.wait_all_tasks_blocked()
            await held[0].fail(declined)
            outcome = await outcome_of(again_reply)
            assert isinstance(outcome, CallFailed)
            assert outcome.__cause__ is declined

    async def test_resend_while_the_first_caller_still_waits_gets_the_same_answer(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A resend made while the first call still waits gets the answer the first gets."""
        held: list[DeferredReply] = []
        await system.spawn(Runner, name="payments")
        outcomes: list[Any] = []
        with trio.fail_after(30):
            first, first_reply = await send_deferred_call(system, held, timeout=10.0)
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_outcome, first_reply, outcomes)
                nursery.start_soon(keep_outcome, again_reply, outcomes)
                await trio.testing.wait_all_tasks_blocked()
                assert await held[0].reply("charged") is True
        assert outcomes == ["charged", "charged"]
        assert len(held) == 1

    async def test_later_resend_of_an_answered_deferred_call_gets_the_answer_too(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The answer stays in the window: every resend within it gets the answer."""
        held: list[DeferredReply] = []
        await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(60):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            await held[0].reply("charged")
            assert await outcome_of(again_reply) == "charged"
            await trio.sleep(20.0)
            _, later_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            assert await outcome_of(later_reply) == "charged"
        assert len(held) == 1
        assert system.delivery.get_stats().duplicates_suppressed == 2

    async def test_resend_of_a_deferred_call_never_answered_ends_at_its_own_deadline(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With no answer in time, the resend gets ``CallTimeout`` at its own deadline."""
        held: list[DeferredReply] = []
        await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            resent_at = trio.current_time()
            _, again_reply = await send_deferred_call(system, held, timeout=3.0, same_as=first)
            assert isinstance(await outcome_of(again_reply), CallTimeout)
            assert trio.current_time() == resent_at + 3.0
            assert await held[0].reply("too late") is False

    async def test_resend_of_a_deferred_call_answered_through_ctx_caller_gets_that_answer(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A handler that deferred may answer through the ``ctx.caller`` it kept: the same
        answer, so resends get it too."""
        slots: list[ReplyHandle] = []

        def defer_keeping_the_slot(ctx: Context) -> None:
            assert ctx.caller is not None
            slots.append(ctx.caller)
            ctx.defer()

        await system.spawn(Runner, name="payments")
        first, first_reply = call(
            None, defer_keeping_the_slot, 1.0, recipient="payments", options=EXACTLY_ONCE
        )
        await system.send_message(first)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            slots[0].reply("charged")
            again, again_reply = call(
                None, defer_keeping_the_slot, 10.0, recipient="payments", options=EXACTLY_ONCE
            )
            again = again.evolve(id=first.id)
            await system.send_message(again)
            assert await outcome_of(again_reply) == "charged"
        assert len(slots) == 1

    async def test_resend_of_a_deferred_call_whose_agent_restarted_unanswered_hears_so(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The instance that deferred the call crashed before answering it: resends get
        ``AgentStopped``, as a caller still waiting would have, not a wait for nothing."""
        held: list[DeferredReply] = []
        ref = await system.spawn(Runner, name="payments")
        first, first_reply = await send_deferred_call(system, held, timeout=1.0)
        with trio.fail_after(30):
            assert isinstance(await outcome_of(first_reply), CallTimeout)
            with pytest.raises(CallFailed):
                await ref.call(crash)
            _, again_reply = await send_deferred_call(system, held, timeout=10.0, same_as=first)
            assert isinstance(await outcome_of(again_reply), AgentStopped)
        assert len(held) == 1


async def send_deferred_call(
    system: MessageSystem,
    held: list[DeferredReply],
    *,
    timeout: float,
    same_as: Envelope | None = None,
) -> tuple[Envelope, ReplyHandle]:
    """Send ``payments`` an exactly-once call that its handler defers into ``held``: a new
    one, or a resend of ``same_as`` (its message id)."""
    envelope, reply = call(
        None, defer_into(held), timeout, recipient="payments", options=EXACTLY_ONCE
    )
    if same_as is not None:
        envelope = envelope.evolve(id=same_as.id)
    await system.send_message(envelope)
    return envelope, reply


async def outcome_of(reply: ReplyHandle) -> Any:
    """What waiting on ``reply`` gives: the reply, or the error it raised."""
    try:
        return await reply
    except Exception as error:
        return error


async def keep_outcome(reply: ReplyHandle, outcomes: list[Any]) -> None:
    """Wait on ``reply`` and append its outcome (see :func:`outcome_of`) to ``outcomes``."""
    outcomes.append(await outcome_of(reply))


def crash(ctx: Context) -> None:
    """An action that crashes the agent running it."""
    raise Boom("crash the agent")


def stats(
    *,
    sent: int = 0,
    delivered: int = 0,
    acknowledged: int = 0,
    retried: int = 0,
    failed: int = 0,
    duplicates_suppressed: int = 0,
    dead_lettered: int = 0,
    pending: int = 0,
) -> DeliveryStats:
    """A ``DeliveryStats`` with zeros for what is not given."""
    return DeliveryStats(
        sent=sent,
        delivered=delivered,
        acknowledged=acknowledged,
        retried=retried,
        failed=failed,
        duplicates_suppressed=duplicates_suppressed,
        dead_lettered=dead_lettered,
        pending=pending,
    )


def balanced(snapshot: DeliveryStats) -> bool:
    """Whether every message sent is settled one way or pending."""
    return snapshot.sent == (
        snapshot.acknowledged
        + snapshot.duplicates_suppressed
        + snapshot.failed
        + snapshot.dead_lettered
        + snapshot.pending
    )


class TestDeliveryStats:
    async def test_a_new_system_has_counted_nothing(self, system: MessageSystem) -> None:
        """Every counter starts at zero."""
        await system.spawn(Recorder, [])
        assert system.delivery.get_stats() == stats()

    async def test_handled_casts_are_sent_delivered_and_acknowledged(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Three handled casts: 3 sent, 3 delivered, 3 acknowledged, none pending."""
        ref = await system.spawn(Recorder, [])
        for number in range(3):
            await ref.cast(number)
        await trio.sleep(1.0)
        assert system.delivery.get_stats() == stats(sent=3, delivered=3, acknowledged=3)

    async def test_messages_in_a_mailbox_or_a_handler_are_pending(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The message in hand and the one queued behind it are both pending until handled."""
        release = trio.Event()
        ref = await system.spawn(Runner)
        await ref.cast(until(release))
        await ref.cast(lambda ctx: None)
        await trio.testing.wait_all_tasks_blocked()
        assert system.delivery.get_stats() == stats(sent=2, delivered=2, pending=2)
        release.set()
        await trio.sleep(1.0)
        assert system.delivery.get_stats() == stats(sent=2, delivered=2, acknowledged=2)

    async def test_message_waiting_for_a_retry_is_pending(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a crash, the message waiting for its retry is counted retried and pending."""
        async with open_message_system(settings(retry_delay=5.0)) as system:
            ref = await system.spawn(Flaky, [], 1)
            await ref.cast("job")
            await trio.sleep(1.0)
            assert system.delivery.get_stats() == stats(sent=1, delivered=1, retried=1, pending=1)

    async def test_crash_then_success_is_one_retry_two_deliveries_one_ack(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast handled on its second try: delivered twice, retried once, acked once."""
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Flaky, [], 1)
            await ref.cast("job")
            await trio.sleep(10.0)
            assert system.delivery.get_stats() == stats(
                sent=1, delivered=2, acknowledged=1, retried=1
            )

    async def test_exhausted_retries_are_one_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast crashing on every try: 4 deliveries, 3 retries, 1 dead letter, 0 acks."""
        async with open_message_system(settings(max_retries=3)) as system:
            ref = await system.spawn(Flaky, [], ALWAYS)
            await ref.cast("job")
            await trio.sleep(10.0)
            assert system.delivery.get_stats() == stats(
                sent=1, delivered=4, retried=3, dead_lettered=1
            )

    async def test_failed_call_is_counted_failed(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose handler raised is failed (its caller was told), not dead-lettered."""
        ref = await system.spawn(Flaky, [], ALWAYS)
        with pytest.raises(CallFailed):
            await ref.call("job")
        await trio.sleep(1.0)
        assert system.delivery.get_stats() == stats(sent=1, delivered=1, failed=1)

    async def test_call_that_could_not_be_delivered_is_counted_failed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose retries ran out is failed once, its refusals counted as retries."""
        async with open_message_system(settings(max_retries=2)) as system:
            ref, release = await spawn_full(system)
            with pytest.raises(DeliveryFailed):
                await ref.call(lambda ctx: None)
            assert system.delivery.get_stats() == stats(
                sent=3, delivered=2, retried=2, failed=1, pending=2
            )
            release.set()
            await trio.sleep(1.0)
            assert system.delivery.get_stats().pending == 0

    async def test_suppressed_duplicate_is_sent_but_not_delivered_twice_to_a_handler(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An exactly-once envelope sent twice: 2 sent and delivered, 1 acked, 1 suppressed."""
        await system.spawn(Recorder, [], name="ledger")
        envelope = cast(None, "pay", EXACTLY_ONCE, recipient="ledger")
        await system.send_message(envelope)
        await system.send_message(envelope)
        await trio.sleep(1.0)
        assert system.delivery.get_stats() == stats(
            sent=2, delivered=2, acknowledged=1, duplicates_suppressed=1
        )

    async def test_cast_given_up_while_waiting_for_room_is_not_left_pending(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A sender cancelled while it waits for room in a full ``BLOCK`` mailbox leaves
        nothing pending once the rest has settled."""
        release = trio.Event()
        ref = await system.spawn(Runner, mailbox=MailboxConfig(capacity=1))
        await ref.cast(until(release))
        await trio.testing.wait_all_tasks_blocked()
        await ref.cast(lambda ctx: None)
        with trio.move_on_after(1.0):
            await ref.cast(lambda ctx: None)
        release.set()
        await trio.sleep(10.0)
        snapshot = system.delivery.get_stats()
        assert snapshot.acknowledged == 2
        assert snapshot.pending == 0

    async def test_sent_is_settled_plus_pending_throughout_a_mixed_run(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Acked, suppressed, failed, dead-lettered and pending always add up to sent, and
        nothing is pending once everything has settled."""
        async with open_message_system(settings(retry_delay=1.0)) as system:
            recorder = await system.spawn(Recorder, [], name="ledger")
            flaky = await system.spawn(Flaky, [], 1)
            doomed = await system.spawn(Flaky, [], ALWAYS)
            snapshots = [system.delivery.get_stats()]
            await recorder.cast("plain")
            duplicate = cast(None, "once", EXACTLY_ONCE, recipient="ledger")
            await system.send_message(duplicate)
            await system.send_message(duplicate)
            await flaky.cast("retried")
            await doomed.cast("doomed")
            await system.send_message(cast(None, "lost", recipient="nobody"))
            snapshots.append(system.delivery.get_stats())
            with pytest.raises(CallFailed):
                await doomed.call("failing")
            snapshots.append(system.delivery.get_stats())
            for _ in range(20):
                await trio.sleep(1.0)
                snapshots.append(system.delivery.get_stats())
        assert all(balanced(snapshot) for snapshot in snapshots)
        assert all(snapshot.pending >= 0 for snapshot in snapshots)
        final = snapshots[-1]
        assert final.pending == 0
        assert (final.acknowledged, final.duplicates_suppressed) == (3, 1)
        assert (final.failed, final.dead_lettered) == (1, 2)


class TestDeadLetterNotices:
    async def test_subscriber_receives_each_dead_letter_as_an_info(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After ``subscribe_dead_letters``, every dead letter reaches the subscriber, in order."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        system.subscribe_dead_letters(watcher)
        silent = await system.spawn(Silent)
        await silent.cast("a")
        await silent.info("b")
        await trio.sleep(1.0)
        assert all(isinstance(letter, DeadLetter) for letter in inbox)
        assert [letter.envelope.payload for letter in inbox] == ["a", "b"]
        assert [letter.reason for letter in inbox] == [DeadLetterReason.UNHANDLED] * 2
        assert inbox == list(system.dead_letters)

    async def test_subscriber_hears_of_exhausted_retries(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The RETRIES_EXHAUSTED letter of a message that kept crashing reaches the subscriber."""
        inbox: list[Any] = []
        async with open_message_system(settings()) as system:
            watcher = await system.spawn(Runner, inbox)
            system.subscribe_dead_letters(watcher)
            doomed = await system.spawn(Flaky, [], ALWAYS)
            await doomed.cast("job")
            await trio.sleep(10.0)
            [letter] = inbox
            assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
            assert letter.envelope.payload == "job"

    async def test_subscribing_twice_sends_each_dead_letter_once(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A second ``subscribe_dead_letters`` of the same agent changes nothing."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        system.subscribe_dead_letters(watcher)
        system.subscribe_dead_letters(watcher)
        silent = await system.spawn(Silent)
        await silent.cast("a")
        await trio.sleep(1.0)
        assert [letter.envelope.payload for letter in inbox] == ["a"]

    async def test_no_notices_before_subscribing(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Dead letters filed before the subscription are not sent to the subscriber."""
        inbox: list[Any] = []
        silent = await system.spawn(Silent)
        await silent.cast("before")
        await trio.sleep(1.0)
        watcher = await system.spawn(Runner, inbox)
        system.subscribe_dead_letters(watcher)
        await silent.cast("after")
        await trio.sleep(1.0)
        assert [letter.envelope.payload for letter in inbox] == ["after"]

    async def test_shutdown_turns_messages_waiting_for_a_retry_into_system_stopped_letters(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At shutdown a message waiting for its retry is not retried but filed SYSTEM_STOPPED."""
        runs: list[Run] = []
        async with open_message_system(settings(retry_delay=10.0)) as system:
            ref = await system.spawn(Flaky, runs, ALWAYS)
            await ref.cast("job")
            await trio.testing.wait_all_tasks_blocked()
            assert len(system.delivery.get_retry_candidates()) == 1
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.SYSTEM_STOPPED
        assert letter.envelope.payload == "job"
        assert len(runs) == 1
        assert system.delivery.get_retry_candidates() == ()
        assert system.delivery.get_stats().pending == 0


class Decides(Flaky):
    """A ``Flaky`` whose ``on_error`` answers ``directive`` for every error."""

    def __init__(self, runs: list[Run], crashes: float, directive: Directive) -> None:
        super().__init__(runs, crashes)
        self.directive = directive

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        return self.directive


GUARANTEES = list(DeliveryGuarantee)

#: The directives after which the system goes on (an escalation at the root ends it).
SURVIVABLE = [Directive.RESUME, Directive.RESTART, Directive.STOP]


class TestDirectivesUnderEachGuarantee:
    @pytest.mark.parametrize("guarantee", GUARANTEES)
    async def test_resume_retries_a_cast_as_after_a_crash_in_the_same_instance(
        self, guarantee: DeliveryGuarantee, autojump_clock: trio.testing.MockClock
    ) -> None:
        """RESUME: a retrying guarantee runs the cast again in the instance that failed it;
        at most once it is a ``HANDLER_CRASHED`` dead letter naming the error."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Decides, runs, 1, Directive.RESUME)
            await ref.cast("job", options=MessageOptions(guarantee=guarantee))
            await trio.sleep(10)
            letters = system.dead_letters
        if guarantee is DeliveryGuarantee.AT_MOST_ONCE:
            assert len(runs) == 1
            [letter] = letters
            assert letter.reason is DeadLetterReason.HANDLER_CRASHED
            assert "Boom" in letter.detail
        else:
            assert len(runs) == 2
            assert runs[0].instance is runs[1].instance
            assert letters == ()

    @pytest.mark.parametrize("guarantee", GUARANTEES)
    @pytest.mark.parametrize("directive", SURVIVABLE)
    async def test_a_failed_call_raises_call_failed_with_the_error(
        self,
        directive: Directive,
        guarantee: DeliveryGuarantee,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """Whatever the directive, the caller of the failing call gets ``CallFailed`` at once."""
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Decides, [], ALWAYS, directive)
            with pytest.raises(CallFailed) as raised:
                await ref.call("job", options=MessageOptions(guarantee=guarantee))
            assert isinstance(raised.value.__cause__, Boom)

    @pytest.mark.parametrize("guarantee", GUARANTEES)
    @pytest.mark.parametrize("directive", SURVIVABLE)
    async def test_failed_casts_are_settled_and_the_books_balance(
        self,
        directive: Directive,
        guarantee: DeliveryGuarantee,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """Casts whose handler always fails end retried, then dead, never pending."""
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Decides, [], ALWAYS, directive)
            for number in range(3):
                await ref.cast(number, options=MessageOptions(guarantee=guarantee))
            await trio.sleep(60)
        snapshot = system.delivery.get_stats()
        assert snapshot.pending == 0
        assert balanced(snapshot)

    @pytest.mark.parametrize("guarantee", GUARANTEES)
    async def test_escalate_at_the_root_ends_the_system(
        self, guarantee: DeliveryGuarantee, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ESCALATE under the root ends the block with ``RestartIntensityExceeded``, even with
        restarts to spare, and the books still balance."""
        systems: list[MessageSystem] = []

        async def escalate() -> None:
            async with open_message_system(settings()) as system:
                systems.append(system)
                ref = await system.spawn(Decides, [], ALWAYS, Directive.ESCALATE)
                await ref.cast("job", options=MessageOptions(guarantee=guarantee))
                await trio.sleep_forever()

        with pytest.raises(RestartIntensityExceeded) as raised:
            await escalate()
        assert isinstance(raised.value.last_failure.__cause__, Boom)
        snapshot = systems[0].delivery.get_stats()
        assert snapshot.pending == 0
        assert balanced(snapshot)


class PromptTooLong(Exception):
    """An error listed in ``no_retry_on``."""


class Rejects(Agent):
    """Counts its handler runs in ``runs``; raises what each message carries (an exception
    instance), from a ``NonRetryable`` when ``wrapped``; ``no_retry_on`` lists
    ``PromptTooLong``; resumes on every error."""

    no_retry_on = (PromptTooLong,)
    resume_on = (Exception,)

    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs

    def _run(self, message: Any) -> None:
        self.runs.append(message)
        error, wrapped = message
        if wrapped:
            try:
                raise NonRetryable("will fail the same way")
            except NonRetryable as cause:
                raise error from cause
        raise error

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self._run(message)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        self._run(message)


#: What ``Rejects`` is sent: the error to raise and whether a ``NonRetryable`` causes it.
NOT_RETRYABLE = [
    pytest.param((NonRetryable("bad input"), False), id="raised"),
    pytest.param((ValueError("bad input"), True), id="caused"),
    pytest.param((PromptTooLong("too long"), False), id="no_retry_on"),
]


class DecidesBoomIsFinal(Decides):
    """A ``Decides`` for which ``Boom`` will fail the same way again."""

    no_retry_on = (Boom,)


class TestNonRetryable:
    def test_non_retryable_is_a_messaging_error(self) -> None:
        """``NonRetryable`` is caught by ``except MessagingError``."""
        assert issubclass(NonRetryable, MessagingError)

    @pytest.mark.parametrize("guarantee", GUARANTEES)
    @pytest.mark.parametrize("message", NOT_RETRYABLE)
    async def test_a_cast_runs_once_and_is_a_rejected_dead_letter(
        self,
        message: Any,
        guarantee: DeliveryGuarantee,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """Under every guarantee the handler runs once and the cast is a ``REJECTED`` dead
        letter naming the error; the books balance."""
        runs: list[Any] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Rejects, runs)
            await ref.cast(message, options=MessageOptions(guarantee=guarantee))
            await trio.sleep(60)
            [letter] = system.dead_letters
        assert len(runs) == 1
        assert letter.reason is DeadLetterReason.REJECTED
        assert type(message[0]).__name__ in letter.detail
        snapshot = system.delivery.get_stats()
        assert snapshot.pending == 0
        assert balanced(snapshot)

    @pytest.mark.parametrize("message", NOT_RETRYABLE)
    async def test_a_call_fails_with_call_failed_once(
        self, message: Any, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call whose handler raised a non-retryable error fails with ``CallFailed``."""
        runs: list[Any] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(Rejects, runs)
            with pytest.raises(CallFailed) as raised:
                await ref.call(message)
        assert raised.value.__cause__ is message[0]
        assert len(runs) == 1

    async def test_the_directive_still_decides_the_agents_fate(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A non-retryable error under RESTART restarts the agent; the cast is still rejected."""
        runs: list[Run] = []
        async with open_message_system(settings()) as system:
            ref = await system.spawn(DecidesBoomIsFinal, runs, 1, Directive.RESTART)
            await ref.cast("job")
            await trio.sleep(60)
            assert system.get_stats()[0].agent_restarts == 1
            assert reasons(system) == [DeadLetterReason.REJECTED]
        assert len(runs) == 1


class TestDefaultExpiry:
    """The default ``MessageOptions.timeout`` (30 s) neither cuts a call's own longer timeout
    short nor expires a system notification."""

    async def test_call_with_a_60_s_timeout_is_not_expired_after_30_s(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """`ref.call(msg, timeout=60)`: the caller waits up to 60 s. The call queued behind a
        40 s handler must be answered; instead the default MessageOptions.timeout (30 s) expires
        it and the caller gets DeliveryFailed after 40 s, with 20 s of its own timeout left."""
        ref = await system.spawn(Runner)
        await ref.cast(busy_for(40))
        assert await ref.call(lambda ctx: "done", timeout=60) == "done"

    async def test_down_reaches_a_monitor_that_was_busy_for_longer_than_30_s(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A monitor's Down (and a timer's message) is a system notification: Erlang never drops
        it. Notices get the default MessageOptions.timeout of 30 s, so a watcher busy for 40 s
        never sees the Down: it becomes an EXPIRED dead letter."""
        inbox: list[Any] = []
        watcher = await system.spawn(Runner, inbox)
        target = await system.spawn(Recorder, [])
        await watcher.call(lambda ctx: ctx.monitor(target))
        await watcher.cast(busy_for(40))
        await trio.testing.wait_all_tasks_blocked()
        await system.stop(target)
        await trio.sleep(60)
        assert [type(message) for message in inbox] == [Down]


def balanced_with_nothing_pending(system: MessageSystem) -> None:
    """The accounting identity of DeliveryStats, and nothing left pending."""
    stats = system.delivery.get_stats()
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
    assert stats.pending == 0, stats
    assert stats.sent == settled, stats


class TestRetriesCappedByMaxRetryDelay:
    async def test_many_retries_capped_by_max_retry_delay_do_not_crash_the_system(
        self,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        """max_retry_delay caps the wait, so a large max_retries is a way to "keep trying for a
        while". The uncapped `multiplier ** (n - 1)` overflows a float at n = 1025 and the
        OverflowError escapes from the router's task, taking the whole system down."""
        config = MessageSystemConfig(
            delivery=DeliveryConfig(
                max_retries=2000, retry_delay=0.01, max_retry_delay=0.01, jitter=0.0
            ),
            router=RouterConfig(circuit_breaker=None),
        )
        async with open_message_system(config) as system:
            forever = MessageOptions(timeout=1e9)
            await system.send_message(cast(None, "x", forever, recipient="nobody"))
            await trio.sleep(60)
            [letter] = system.dead_letters
            assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
            balanced_with_nothing_pending(system)


class TestCallsAnsweredBeforeTheirHandlerCrashed:
    async def test_call_answered_before_its_handler_crashed_is_not_counted_failed(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """DeliveryStats.failed: "Calls that ended in an error for their waiting caller". A
        handler that answers through ctx.caller and then raises gave its caller the reply."""

        def answer_then_crash(ctx: Context) -> None:
            assert ctx.caller is not None
            ctx.caller.reply("ok")
            raise Boom("after replying")

        ref = await system.spawn(Runner)
        assert await ref.call(answer_then_crash) == "ok"
        await trio.testing.wait_all_tasks_blocked()
        assert system.delivery.get_stats().failed == 0


class TestCallsWaitingForARetry:
    async def test_a_call_waiting_for_a_retry_is_listed_in_the_retry_candidates(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Issue: `get_retry_candidates()` lists "what is waiting for a retry, and when", and
        RouterStats.retries_waiting counts it. A call to a name not spawned yet waits for its
        retry in the caller's task, invisible to both."""
        async with trio.open_nursery() as nursery:
            envelope, reply = call(None, "hello", 5.0, recipient="later")
            nursery.start_soon(system.send_message, envelope)
            await trio.testing.wait_all_tasks_blocked()
            waiting = system.delivery.get_retry_candidates()
            retries_waiting = system.router.stats().retries_waiting
            await system.spawn(Recorder, [], name="later")
        assert await reply == "hello"
        assert [candidate.envelope for candidate in waiting] == [envelope]
        assert retries_waiting == 1

    async def test_a_call_waiting_for_a_retry_fails_with_system_closed_at_the_shutdown(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The shutdown settles the calls waiting for a retry as it does the casts: their
        callers hear ``SystemClosed`` at once, not when the retry comes due, and nothing is
        left pending."""
        failures: list[tuple[type[BaseException], float]] = []
        async with trio.open_nursery() as callers:
            async with open_message_system() as system:
                options = MessageOptions(max_retries=3, retry_delay=40.0)
                envelope, _ = call(None, "hello", 100.0, recipient="later", options=options)

                async def call_someone_not_there_yet() -> None:
                    try:
                        await system.send_message(envelope)
                    except MessagingError as error:
                        failures.append((type(error), trio.current_time()))

                callers.start_soon(call_someone_not_there_yet)
                await trio.testing.wait_all_tasks_blocked()
                assert system.delivery.get_stats().pending == 1
                shut_down_at = trio.current_time()
            books = system.delivery.get_stats()
        assert failures == [(SystemClosed, shut_down_at)]
        assert (books.pending, books.failed) == (0, 1)
