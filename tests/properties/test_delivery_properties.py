"""Properties of the delivery guarantees under random traffic and injected faults (hypothesis,
virtual time).

Each example spawns a few target agents (``Flaky``) and a few senders, some of them plain tasks
sending through refs and some of them agents (``Relay``) sending from inside a handler, then
sends up to ~30 casts with random priorities, pauses and send methods. Faults are injected by
a plan: a target's handler raises on chosen runs of chosen messages (which crashes the agent,
restarted by a root supervisor with room for 10,000 restarts), some targets have small bounded
mailboxes that reject, and there is no circuit breaker, or one that opens after 1 to 5
failures and half-opens after 0.2 to 30 s. Each example runs in ONE ``trio.run`` (pytest-trio)
on the ``autojump_clock``, so backoffs, circuit reset timeouts and the final wait take no real
time. Each example ends by waiting well past every retry, circuit
reset and message timeout, until every task is blocked, and is then checked inside the still
open system.

The payload of every message is its number in the scenario, so the shared ``Ledger`` knows for
each one how often its handler started (``runs``), how often it returned (``completed``), and the
``attempt`` of the envelope on each run. ``system.dead_letters`` tells the rest.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, TypeAlias

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    Context,
    DeadLetter,
    DeadLetterReason,
    DeferredReply,
    DeliveryConfig,
    DeliveryGuarantee,
    DeliveryStats,
    Envelope,
    MailboxConfig,
    MessageId,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    Priority,
    RouterConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import CallFailed, CallTimeout, CircuitOpen, MailboxFull

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE
AT_LEAST_ONCE = DeliveryGuarantee.AT_LEAST_ONCE
EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE
EXPIRED = DeadLetterReason.EXPIRED

#: Virtual seconds waited after the last send: far past every backoff (at most a few seconds
#: here), the circuit breaker's reset timeout (30 s) and a message's timeout (30 s).
SETTLE = 120.0
#: The system's ``max_retries`` (the default), for messages that do not set their own.
DEFAULT_RETRIES = 3
#: How long a sender pauses before a message: mostly not at all, sometimes a little.
PAUSES = (0.0, 0.0, 0.0, 0.01, 0.05, 0.3)
#: How long a target's handler works on a message (virtual seconds).
WORK = (0.0, 0.0, 0.01, 0.1)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class InjectedCrash(Exception):
    """What a target's handler raises on a run its plan marks."""


# -- scenarios ----------------------------------------------------------------------------


@attrs.frozen
class Target:
    """A target agent: its mailbox and how long its handler works on each message."""

    mailbox: MailboxConfig
    work: float


@attrs.frozen
class Message:
    """One cast: who sends it to whom, how, and on which handler runs it crashes."""

    #: Its payload, unique in the scenario.
    number: int
    sender: int
    target: int
    priority: Priority
    #: ``await ref.cast(...)``, or ``ref.cast_nowait(...)``.
    blocking: bool
    #: Virtual seconds the sender waits before sending it.
    pause: float
    #: The runs of its handler (1 for the first) that raise ``InjectedCrash``.
    crashes: frozenset[int] = frozenset()
    #: ``MessageOptions`` overrides (``None``: the system's).
    max_retries: int | None = None
    retry_delay: float | None = None
    guarantee: DeliveryGuarantee | None = None

    def options(self) -> MessageOptions | None:
        if self.max_retries is None and self.retry_delay is None and self.guarantee is None:
            return None
        return MessageOptions(
            priority=self.priority,
            max_retries=self.max_retries,
            retry_delay=self.retry_delay,
            guarantee=self.guarantee,
        )


@attrs.frozen
class Traffic:
    """Targets, senders (True: an agent, False: a task), the messages, and the breaker."""

    targets: tuple[Target, ...]
    senders: tuple[bool, ...]
    messages: tuple[Message, ...]
    #: Each target's circuit breaker, or ``None`` for none.
    breaker: CircuitBreakerConfig | None

    def plan(self) -> dict[int, Message]:
        return {message.number: message for message in self.messages}


UNBOUNDED = MailboxConfig()
REJECTING = tuple(
    MailboxConfig(capacity=capacity, overflow=OverflowPolicy.REJECT) for capacity in (1, 2, 3)
)
BLOCKING = tuple(
    MailboxConfig(capacity=capacity, overflow=OverflowPolicy.BLOCK) for capacity in (1, 2, 3)
)

#: No crash at all.
no_crashes = st.just(frozenset[int]())
#: Crash plans for properties that do not count retries: mostly none, else a few of the first
#: five runs (the default allows four).
crash_sets = st.one_of(
    st.just(frozenset[int]()),
    st.just(frozenset[int]()),
    st.frozensets(st.integers(min_value=1, max_value=5), max_size=5),
)


#: No breaker, the default one, or one that opens and recovers quickly.
breakers = st.one_of(
    st.none(),
    st.builds(
        CircuitBreakerConfig,
        failure_threshold=st.sampled_from((1, 2, 5)),
        reset_timeout=st.sampled_from((0.2, 1.0, 30.0)),
        half_open_max_calls=st.sampled_from((1, 2)),
    ),
)


@st.composite
def traffic(
    draw: st.DrawFn,
    *,
    mailboxes: Sequence[MailboxConfig],
    crashes: st.SearchStrategy[frozenset[int]] = no_crashes,
    guarantees: Sequence[DeliveryGuarantee | None] = (None,),
    faults: bool = True,
    max_messages: int = 30,
) -> Traffic:
    """Random traffic. Without ``faults`` there is no breaker, and a cast into a bounded
    mailbox (which blocks) is always a blocking one, so that no delivery ever fails."""
    targets = draw(
        st.lists(
            st.builds(Target, st.sampled_from(mailboxes), st.sampled_from(WORK)),
            min_size=1,
            max_size=3,
        )
    )
    senders = draw(st.lists(st.booleans(), min_size=1, max_size=3))
    count = draw(st.integers(min_value=0, max_value=max_messages))
    messages = []
    for number in range(count):
        target = draw(st.integers(min_value=0, max_value=len(targets) - 1))
        bounded = targets[target].mailbox.capacity is not None
        messages.append(
            Message(
                number=number,
                sender=draw(st.integers(min_value=0, max_value=len(senders) - 1)),
                target=target,
                priority=draw(st.sampled_from(Priority)),
                blocking=True if bounded and not faults else draw(st.booleans()),
                pause=draw(st.sampled_from(PAUSES)),
                crashes=draw(crashes),
                guarantee=draw(st.sampled_from(guarantees)),
            )
        )
    breaker = draw(breakers) if faults else None
    return Traffic(tuple(targets), tuple(senders), tuple(messages), breaker)


@st.composite
def retry_traffic(draw: st.DrawFn) -> Traffic:
    """Traffic where every message sets its own ``max_retries`` (0 to 4), often its own
    ``retry_delay``, and crashes on a random pattern of runs (sometimes on every run)."""
    base = draw(
        traffic(
            mailboxes=(UNBOUNDED, UNBOUNDED, *REJECTING),
            guarantees=(None, EXACTLY_ONCE),
            max_messages=20,  # each may run up to five times
        )
    )
    messages = []
    for message in base.messages:
        retries = draw(st.integers(min_value=0, max_value=4))
        if draw(st.booleans()):
            crashes = frozenset(range(1, retries + 3))  # every run it may get, and one more
        else:
            pattern = draw(st.lists(st.booleans(), min_size=retries + 2, max_size=retries + 2))
            crashes = frozenset(run for run, crash in enumerate(pattern, 1) if crash)
        delay = draw(st.sampled_from((None, 0.0, 0.05, 0.5)))
        messages.append(
            attrs.evolve(message, max_retries=retries, retry_delay=delay, crashes=crashes)
        )
    return attrs.evolve(base, messages=tuple(messages))


# -- the agents and what they record -------------------------------------------------------


@attrs.frozen
class Handled:
    """A handler run that returned normally."""

    target: int
    sender: AgentId | None
    number: int
    #: Trio time it returned.
    at: float


class Ledger:
    """What the handlers saw, shared by every instance of every agent of one example."""

    def __init__(self, crashes: dict[int, frozenset[int]]) -> None:
        self.crashes = crashes
        self.runs: collections.Counter[int] = collections.Counter()
        self.completed: collections.Counter[int] = collections.Counter()
        #: ``envelope.attempt`` on each run of each message.
        self.attempts: dict[int, list[int]] = collections.defaultdict(list)
        #: The message ids each payload arrived under.
        self.ids: dict[int, set[MessageId]] = collections.defaultdict(set)
        #: Completed runs, in the order they returned.
        self.handled: list[Handled] = []
        #: Sends that raised, by payload (at most once only).
        self.raised: dict[int, Exception] = {}

    def begin(self, number: int, envelope: Envelope) -> int:
        self.runs[number] += 1
        self.attempts[number].append(envelope.attempt)
        self.ids[number].add(envelope.id)
        return self.runs[number]

    def complete(self, target: int, number: int, ctx: Context) -> None:
        self.completed[number] += 1
        self.handled.append(Handled(target, ctx.sender_id, number, trio.current_time()))


class Flaky(Agent):
    """A target: works on each cast for a while, then raises if its plan says so."""

    def __init__(self, ledger: Ledger, index: int, work: float) -> None:
        self.ledger = ledger
        self.index = index
        self.work = work

    async def handle_cast(self, message: int, ctx: Context) -> None:
        run = self.ledger.begin(message, ctx.envelope)
        await trio.sleep(self.work)
        if run in self.ledger.crashes.get(message, ()):
            raise InjectedCrash(f"message {message}, run {run}")
        self.ledger.complete(self.index, message, ctx)


Script: TypeAlias = tuple[tuple[AgentRef, Message], ...]


async def send_script(ledger: Ledger, script: Script) -> None:
    """Send each message of a script in order (from whatever task or agent runs it)."""
    for ref, message in script:
        if message.pause:
            await trio.sleep(message.pause)
        options = message.options()
        extra: dict[str, Any] = (
            {"priority": message.priority} if options is None else {"options": options}
        )
        try:
            if message.blocking:
                await ref.cast(message.number, **extra)
            else:
                ref.cast_nowait(message.number, **extra)
        except (MailboxFull, CircuitOpen) as error:  # at most once: the sender hears of it
            ledger.raised[message.number] = error


class Relay(Agent):
    """A sender that is an agent: its one cast is a script it sends from its handler."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def handle_cast(self, message: Script, ctx: Context) -> None:
        await send_script(self.ledger, message)


# -- running an example ---------------------------------------------------------------------


def system_config(
    guarantee: DeliveryGuarantee, breaker: CircuitBreakerConfig | None
) -> MessageSystemConfig:
    return MessageSystemConfig(
        max_restarts=10_000,
        delivery=DeliveryConfig(guarantee=guarantee, seed=0),
        router=RouterConfig(circuit_breaker=breaker),
    )


async def settle() -> None:
    """Wait until nothing is left to happen: every retry fired, every handler returned."""
    await trio.sleep(SETTLE)
    await trio.testing.wait_all_tasks_blocked()


@attrs.frozen
class Outcome:
    """What one example left behind, read before the system shut down."""

    traffic: Traffic
    guarantee: DeliveryGuarantee
    ledger: Ledger
    stats: DeliveryStats
    #: Dead-letter reasons by payload.
    dead: dict[int, list[DeadLetterReason]]
    #: Every dead letter, with the time it was filed.
    letters: tuple[DeadLetter, ...]
    relays: dict[int, AgentId]
    #: Messages still waiting anywhere (mailboxes, retry schedule).
    waiting: int
    #: Casts that carried a script to a relay.
    scripts: int
    #: Sends a full mailbox refused, and how often a circuit opened.
    rejected: int
    circuits_opened: int

    def effective(self, message: Message) -> DeliveryGuarantee:
        return self.guarantee if message.guarantee is None else message.guarantee

    def retries(self, message: Message) -> int:
        return DEFAULT_RETRIES if message.max_retries is None else message.max_retries

    def describe(self) -> str:
        ledger = self.ledger
        lines = [f"stats: {self.stats}"]
        for message in self.traffic.messages:
            number = message.number
            lines.append(
                f"  #{number} -> t{message.target} crashes={sorted(message.crashes)}"
                f" runs={ledger.runs[number]} attempts={ledger.attempts.get(number, [])}"
                f" completed={ledger.completed[number]} dead={self.dead.get(number, [])}"
                f" raised={ledger.raised.get(number)!r}"
            )
        return "\n".join(lines)


async def drive(scenario: Traffic, guarantee: DeliveryGuarantee) -> Outcome:
    """Run the traffic in a fresh system, settle, and collect what happened."""
    plan = scenario.plan()
    ledger = Ledger({number: message.crashes for number, message in plan.items()})
    async with open_message_system(system_config(guarantee, scenario.breaker)) as system:
        refs = [
            await system.spawn(Flaky, ledger, index, target.work, mailbox=target.mailbox)
            for index, target in enumerate(scenario.targets)
        ]
        relays = {
            index: await system.spawn(Relay, ledger)
            for index, is_agent in enumerate(scenario.senders)
            if is_agent
        }
        scripts = 0
        async with trio.open_nursery() as nursery:
            for index in range(len(scenario.senders)):
                script = tuple(
                    (refs[message.target], message)
                    for message in scenario.messages
                    if message.sender == index
                )
                if index in relays:
                    scripts += 1
                    nursery.start_soon(relays[index].cast, script)
                else:
                    nursery.start_soon(send_script, ledger, script)
        await settle()
        return collect(system, scenario, guarantee, ledger, relays, scripts)


def collect(
    system: MessageSystem,
    scenario: Traffic,
    guarantee: DeliveryGuarantee,
    ledger: Ledger,
    relays: dict[int, AgentRef],
    scripts: int,
) -> Outcome:
    dead: dict[int, list[DeadLetterReason]] = collections.defaultdict(list)
    for letter in system.dead_letters:
        assert isinstance(letter.envelope.payload, int), f"unexpected dead letter {letter}"
        dead[letter.envelope.payload].append(letter.reason)
    _, mailboxes = system.get_stats()
    waiting = sum(mailbox.current_queue_size for mailbox in mailboxes)
    waiting += len(system.delivery.get_retry_candidates())
    return Outcome(
        traffic=scenario,
        guarantee=guarantee,
        ledger=ledger,
        stats=system.delivery.get_stats(),
        dead=dict(dead),
        letters=system.dead_letters,
        relays={index: ref.id for index, ref in relays.items()},
        waiting=waiting,
        scripts=scripts,
        rejected=sum(mailbox.messages_rejected for mailbox in mailboxes),
        circuits_opened=sum(
            cell.endpoint.admission.times_opened
            for cell in system.live_cells()
            if cell.endpoint.admission is not None
        ),
    )


def check_nothing_lost(outcome: Outcome) -> None:
    """Every message ends exactly once: handled once, or one dead letter; nothing pending."""
    ledger, stats = outcome.ledger, outcome.stats
    for reasons in outcome.dead.values():
        for reason in reasons:
            event(f"dead letter: {reason.value}")
    event(f"retried: {'yes' if stats.retried else 'no'}")
    event(f"a full mailbox refused: {'yes' if outcome.rejected else 'no'}")
    event(f"a circuit opened: {'yes' if outcome.circuits_opened else 'no'}")
    why = outcome.describe()
    assert stats.pending == 0, why
    assert outcome.waiting == 0, why
    for message in outcome.traffic.messages:
        number = message.number
        completed = ledger.completed[number]
        letters = outcome.dead.get(number, [])
        assert completed <= 1, f"#{number} handled {completed} times\n{why}"
        assert completed + len(letters) == 1, f"#{number} did not end exactly once\n{why}"
        assert len(ledger.ids[number]) <= 1, f"#{number} arrived under two ids\n{why}"
    messages = len(outcome.traffic.messages)
    assert stats.sent == messages + outcome.scripts, why
    assert stats.acknowledged == ledger.completed.total() + outcome.scripts, why
    assert stats.dead_lettered == len(outcome.letters) == sum(map(len, outcome.dead.values()))
    assert stats.failed == 0, why
    assert stats.duplicates_suppressed == 0, why


# -- 1. at least once: nothing is lost -------------------------------------------------------


@SETTINGS
@given(
    scenario=traffic(
        mailboxes=(UNBOUNDED, UNBOUNDED, *REJECTING),
        crashes=crash_sets,
    )
)
async def test_at_least_once_every_message_is_handled_or_dead_lettered(
    autojump_clock: trio.testing.MockClock, scenario: Traffic
) -> None:
    """Under at-least-once, with handler crashes, rejecting mailboxes and an open circuit, each
    message is handled (once) or dead-lettered (once, after its retries); none stays pending."""
    outcome = await drive(scenario, AT_LEAST_ONCE)
    check_nothing_lost(outcome)
    why = outcome.describe()
    # At least once, a sender never hears of a failure: it is retried instead.
    assert not outcome.ledger.raised, why
    for message in scenario.messages:
        number = message.number
        assert outcome.ledger.runs[number] <= DEFAULT_RETRIES + 1, why
        for reason in outcome.dead.get(number, []):
            assert reason in (DeadLetterReason.RETRIES_EXHAUSTED, EXPIRED), why
        unbounded = scenario.targets[message.target].mailbox.capacity is None
        if not message.crashes and unbounded and scenario.breaker is None:
            # Nothing can stand in its way: it is handled.
            assert outcome.ledger.completed[number] == 1, why


# -- 2. exactly once: duplicates are suppressed ----------------------------------------------


@attrs.frozen
class Send:
    """Send message ``number`` (an envelope built by the test) through ``send_message``."""

    number: int
    target: int
    priority: Priority
    pause: float


@attrs.frozen
class Resend:
    """Send an earlier message again: the same envelope object, or a copy with its id."""

    number: int
    same_object: bool
    pause: float


Step: TypeAlias = Send | Resend


@attrs.frozen
class DuplicateTraffic:
    targets: tuple[Target, ...]
    #: Each sender's steps, in order.
    senders: tuple[tuple[Step, ...], ...]
    crashes: dict[int, frozenset[int]]
    breaker: CircuitBreakerConfig | None

    def sends(self) -> list[Send]:
        return [step for steps in self.senders for step in steps if isinstance(step, Send)]


@st.composite
def duplicate_traffic(draw: st.DrawFn) -> DuplicateTraffic:
    targets = draw(
        st.lists(
            st.builds(Target, st.just(UNBOUNDED), st.sampled_from(WORK)), min_size=1, max_size=3
        )
    )
    senders: list[tuple[Step, ...]] = []
    crashes: dict[int, frozenset[int]] = {}
    number = 0
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        steps: list[Step] = []
        own: list[int] = []
        for _ in range(draw(st.integers(min_value=0, max_value=12))):
            pause = draw(st.sampled_from(PAUSES))
            resend: bool = bool(own) and draw(st.booleans())
            if resend:
                steps.append(Resend(draw(st.sampled_from(own)), draw(st.booleans()), pause))
                continue
            target = draw(st.integers(min_value=0, max_value=len(targets) - 1))
            steps.append(Send(number, target, draw(st.sampled_from(Priority)), pause))
            crashes[number] = draw(crash_sets)
            own.append(number)
            number += 1
        senders.append(tuple(steps))
    return DuplicateTraffic(tuple(targets), tuple(senders), crashes, draw(breakers))


@SETTINGS
@given(scenario=duplicate_traffic())
async def test_exactly_once_no_message_is_handled_twice(
    autojump_clock: trio.testing.MockClock, scenario: DuplicateTraffic
) -> None:
    """Under exactly-once, with envelopes sent again and handler crashes, no message id's
    handler completes twice; ``duplicates_suppressed`` counts exactly the copies that were
    settled without a handler, and every copy sent after its message completed is one."""
    ledger = Ledger(scenario.crashes)
    envelopes: dict[int, Envelope] = {}
    copies: collections.Counter[int] = collections.Counter()
    late: collections.Counter[int] = collections.Counter()
    async with open_message_system(system_config(EXACTLY_ONCE, scenario.breaker)) as system:
        refs = [
            await system.spawn(Flaky, ledger, index, target.work, mailbox=target.mailbox)
            for index, target in enumerate(scenario.targets)
        ]

        async def sender(steps: tuple[Step, ...]) -> None:
            for step in steps:
                if step.pause:
                    await trio.sleep(step.pause)
                if isinstance(step, Send):
                    options = MessageOptions(priority=step.priority)
                    envelope = cast(None, step.number, options, recipient=refs[step.target].id)
                    envelopes[step.number] = envelope
                else:
                    original = envelopes[step.number]
                    envelope = original if step.same_object else original.evolve(attempt=0)
                    if ledger.completed[step.number]:
                        late[step.number] += 1
                copies[step.number] += 1
                await system.send_message(envelope)

        async with trio.open_nursery() as nursery:
            for steps in scenario.senders:
                nursery.start_soon(sender, steps)
        await settle()
        stats = system.delivery.get_stats()
        letters = system.dead_letters
        _, mailboxes = system.get_stats()
        waiting = sum(mailbox.current_queue_size for mailbox in mailboxes)
        waiting += len(system.delivery.get_retry_candidates())

    dead: dict[int, list[DeadLetter]] = collections.defaultdict(list)
    for letter in letters:
        dead[letter.envelope.payload].append(letter)
    reasons = {n: [(letter.reason.value, letter.at) for letter in ds] for n, ds in dead.items()}
    why = (
        f"stats: {stats}\ncopies: {dict(copies)}\nlate: {dict(late)}\n"
        f"completed: {dict(ledger.completed)}\nruns: {dict(ledger.runs)}\ndead: {reasons}"
    )
    assert stats.pending == 0, why
    assert waiting == 0, why
    completed_at = {handled.number: handled.at for handled in ledger.handled}
    for send in scenario.sends():
        number = send.number
        assert ledger.completed[number] <= 1, f"#{number} completed twice\n{why}"
        assert len(ledger.ids[number]) <= 1, f"#{number} arrived under two ids\n{why}"
        assert ledger.completed[number] or dead[number], f"#{number} vanished\n{why}"
        if number in completed_at and scenario.breaker is None:
            # Once completed, a copy is suppressed: it is never given up on afterwards.
            after = [letter for letter in dead[number] if letter.at > completed_at[number]]
            assert not after, f"#{number} dead-lettered after it completed\n{why}"
    total_copies = copies.total()
    assert stats.sent == total_copies, why
    assert stats.acknowledged == ledger.completed.total(), why
    assert stats.dead_lettered == len(letters), why
    assert stats.failed == 0, why
    assert stats.duplicates_suppressed == total_copies - stats.acknowledged - len(letters), why
    if scenario.breaker is None:
        assert stats.duplicates_suppressed >= late.total(), why
    event(f"duplicates suppressed: {'yes' if stats.duplicates_suppressed else 'no'}")
    event(f"a copy sent after its message completed: {'yes' if late else 'no'}")
    event(f"dead letters: {'yes' if letters else 'no'}")


# -- 3. at most once: never redelivered ------------------------------------------------------


@SETTINGS
@given(
    guarantee=st.sampled_from((AT_MOST_ONCE, AT_LEAST_ONCE)),
    scenario=traffic(
        mailboxes=(UNBOUNDED, UNBOUNDED, *REJECTING),
        crashes=crash_sets,
        guarantees=(None, None, AT_MOST_ONCE, AT_LEAST_ONCE, EXACTLY_ONCE),
    ),
)
async def test_at_most_once_a_handler_runs_at_most_once(
    autojump_clock: trio.testing.MockClock, guarantee: DeliveryGuarantee, scenario: Traffic
) -> None:
    """A message sent at most once (by the system's default or its own options) reaches a
    handler at most once, whatever crashes: on its first try, and if that crashed, or it could
    not be delivered, it is a dead letter with that reason; the others are not lost either."""
    outcome = await drive(scenario, guarantee)
    check_nothing_lost(outcome)
    ledger = outcome.ledger
    why = outcome.describe()
    for message in scenario.messages:
        if outcome.effective(message) is not AT_MOST_ONCE:
            continue
        number = message.number
        runs = ledger.runs[number]
        letters = outcome.dead.get(number, [])
        assert runs <= 1, f"#{number} ran {runs} times\n{why}"
        assert ledger.attempts.get(number, [0]) == [0], why
        error = ledger.raised.get(number)
        if error is not None:
            expected = (
                DeadLetterReason.MAILBOX_FULL
                if isinstance(error, MailboxFull)
                else DeadLetterReason.CIRCUIT_OPEN
            )
            assert runs == 0, why
            assert letters == [expected], why
        elif 1 in message.crashes:
            assert runs == 1, why
            assert letters == [DeadLetterReason.HANDLER_CRASHED], why
        else:
            assert runs == 1, why
            assert ledger.completed[number] == 1, why
    for message in scenario.messages:
        if outcome.effective(message) is not AT_MOST_ONCE:
            assert message.number not in ledger.raised, why


# -- 4. ordering ------------------------------------------------------------------------------


@SETTINGS
@given(scenario=traffic(mailboxes=(UNBOUNDED, UNBOUNDED, *BLOCKING), faults=False))
async def test_fifo_per_sender_and_recipient_within_a_priority(
    autojump_clock: trio.testing.MockClock, scenario: Traffic
) -> None:
    """With no faults, the messages of one sender (task or agent) to one recipient at one
    priority are handled in the order they were sent, each exactly once."""
    outcome = await drive(scenario, AT_LEAST_ONCE)
    check_nothing_lost(outcome)
    why = outcome.describe()
    assert not outcome.letters, why
    assert outcome.stats.retried == 0, why
    plan = scenario.plan()
    for handled in outcome.ledger.handled:
        expected_sender = outcome.relays.get(plan[handled.number].sender)
        assert handled.sender == expected_sender, why
    lanes: dict[tuple[int, int, Priority], list[int]] = collections.defaultdict(list)
    for message in scenario.messages:
        lanes[message.sender, message.target, message.priority].append(message.number)
    for (sender, target, priority), sent in lanes.items():
        handled_order = [
            handled.number
            for handled in outcome.ledger.handled
            if handled.target == target
            and plan[handled.number].sender == sender
            and plan[handled.number].priority == priority
        ]
        assert handled_order == sent, (
            f"sender {sender} -> target {target} at {priority.name}: sent {sent},"
            f" handled {handled_order}\n{why}"
        )


# -- 5. retries are bounded --------------------------------------------------------------------


@SETTINGS
@given(scenario=retry_traffic())
async def test_a_handler_runs_at_most_max_retries_plus_one_times(
    autojump_clock: trio.testing.MockClock, scenario: Traffic
) -> None:
    """With ``MessageOptions(max_retries=k)``, a message's handler runs at most k + 1 times; a
    message that crashed on every run it got ends as a RETRIES_EXHAUSTED dead letter. Without
    a circuit breaker, to an unbounded mailbox, every try is a run, so the runs are exactly
    those the pattern allows. (A retry waits for an open circuit to half-open, so with a
    breaker a message can expire before it has used its retries.)"""
    outcome = await drive(scenario, AT_LEAST_ONCE)
    check_nothing_lost(outcome)
    ledger = outcome.ledger
    why = outcome.describe()
    for message in scenario.messages:
        number = message.number
        k = outcome.retries(message)
        runs = ledger.runs[number]
        attempts = ledger.attempts.get(number, [])
        assert runs <= k + 1, f"#{number} ran {runs} times with max_retries={k}\n{why}"
        assert attempts == sorted(set(attempts)), why
        assert all(0 <= attempt <= k for attempt in attempts), why
        crashed_every_run = all(run in message.crashes for run in range(1, runs + 1))
        if crashed_every_run:
            assert ledger.completed[number] == 0, why
            letters = outcome.dead.get(number)
            if scenario.breaker is not None and runs < k + 1 and letters == [EXPIRED]:
                # Its next try waited for the open circuit to half-open (30 s at most), and
                # its own timeout (30 s) passed first.
                continue
            assert letters == [DeadLetterReason.RETRIES_EXHAUSTED], why
        else:
            assert ledger.completed[number] == 1, why
            assert number not in outcome.dead, why
        if scenario.breaker is None and scenario.targets[message.target].mailbox.capacity is None:
            first_success = next(
                (run for run in range(1, k + 2) if run not in message.crashes), None
            )
            expected_runs = k + 1 if first_success is None else first_success
            assert runs == expected_runs, why
            assert attempts == list(range(runs)), why
    if scenario.breaker is None and outcome.rejected == 0:
        assert outcome.stats.retried == sum(ledger.runs[m.number] - 1 for m in scenario.messages)


# -- 6. exactly once: resends of a call whose reply was deferred ----------------------------


class Declined(Exception):
    """The error a deferred call is answered with, when it is answered with one."""


@attrs.frozen
class DeferredResends:
    """One exactly-once call whose handler defers its reply, sent at 0, and its resends.

    Sends are at whole seconds, deadlines at half seconds and the answer at a quarter past a
    second, so that no two of them fall at the same virtual time and the expected outcome of
    each call is never a race."""

    #: The first caller's timeout: it gives up then, if no answer came before.
    first_timeout: float
    #: ``(sent at, timeout)`` of each resend (same message id, through ``send_message``).
    resends: tuple[tuple[float, float], ...]
    #: When the deferred answer is given (``None``: never).
    answer_at: float | None
    #: Whether it is an error (``fail``) rather than a value (``reply``).
    as_error: bool

    def expected(self, sent_at: float, timeout: float, answer: object) -> object:
        """What a call sent at ``sent_at`` with ``timeout`` gets: the answer if it is given
        before the call's deadline, else ``CallTimeout``."""
        if self.answer_at is not None and self.answer_at < sent_at + timeout:
            return answer
        return CallTimeout


half_seconds = st.integers(min_value=0, max_value=20).map(lambda whole: whole + 0.5)


@st.composite
def deferred_resends(draw: st.DrawFn) -> DeferredResends:
    resends = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=30).map(float), half_seconds),
            min_size=1,
            max_size=4,
        )
    )
    answer_at = draw(
        st.none() | st.integers(min_value=0, max_value=40).map(lambda whole: whole + 0.25)
    )
    return DeferredResends(draw(half_seconds), tuple(resends), answer_at, draw(st.booleans()))


@SETTINGS
@given(scenario=deferred_resends())
async def test_exactly_once_resends_of_a_deferred_call_get_its_answer(
    autojump_clock: trio.testing.MockClock, scenario: DeferredResends
) -> None:
    """Whatever the order of the first call's give-up, its resends and the deferred answer
    (a value or an error), each call gets exactly that answer if it is given before the call's
    own deadline, and ``CallTimeout`` otherwise; the handler runs once; the books balance
    with nothing pending."""
    event(f"answered: {scenario.answer_at is not None}, as an error: {scenario.as_error}")
    held: list[DeferredReply] = []
    answer: object = Declined("declined") if scenario.as_error else "charged"
    outcomes: dict[int, object] = {}
    once = MessageOptions(guarantee=EXACTLY_ONCE)

    def defer(ctx: Context) -> None:
        held.append(ctx.defer())

    class Deferring(Agent):
        async def handle_call(self, message: Any, ctx: Context) -> None:
            message(ctx)

    async def wait_for(number: int, reply: Any) -> None:
        try:
            outcomes[number] = await reply
        except CallTimeout:
            outcomes[number] = CallTimeout
        except CallFailed as error:
            outcomes[number] = error.__cause__

    async def resend(number: int, sent_at: float, timeout: float) -> None:
        await trio.sleep_until(start + sent_at)
        envelope, reply = call(None, defer, timeout, recipient="payments", options=once)
        envelope = envelope.evolve(id=first.id)
        await system.send_message(envelope)
        await wait_for(number, reply)

    async def give_answer(at: float) -> None:
        await trio.sleep_until(start + at)
        if isinstance(answer, Declined):
            await held[0].fail(answer)
        else:
            await held[0].reply(answer)

    with trio.fail_after(600):
        async with open_message_system(system_config(EXACTLY_ONCE, None)) as system:
            await system.spawn(Deferring, name="payments")
            start = trio.current_time()  # the examples share one clock
            first, first_reply = call(
                None, defer, scenario.first_timeout, recipient="payments", options=once
            )
            async with trio.open_nursery() as nursery:
                await system.send_message(first)
                nursery.start_soon(wait_for, 0, first_reply)
                for number, (sent_at, timeout) in enumerate(scenario.resends, start=1):
                    nursery.start_soon(resend, number, sent_at, timeout)
                if scenario.answer_at is not None:
                    nursery.start_soon(give_answer, scenario.answer_at)
            stats = system.delivery.get_stats()

    for sent_at, timeout in scenario.resends:
        if scenario.answer_at is None or sent_at + timeout < scenario.answer_at:
            event("a resend timed out")
        elif sent_at < scenario.answer_at:
            event("a resend waited for the answer")
        else:
            event("a resend came after the answer")
    if scenario.answer_at is not None and scenario.first_timeout < scenario.answer_at:
        event("the first caller gave up before the answer")
    why = f"{scenario}: {outcomes}"
    assert outcomes[0] == scenario.expected(0.0, scenario.first_timeout, answer), why
    for number, (sent_at, timeout) in enumerate(scenario.resends, start=1):
        assert outcomes[number] == scenario.expected(sent_at, timeout, answer), why
    assert len(held) == 1, why
    assert stats.pending == 0, why
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed
    assert stats.sent == settled + stats.dead_lettered, why
    assert stats.duplicates_suppressed == len(scenario.resends), why
