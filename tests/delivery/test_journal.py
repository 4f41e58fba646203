"""The journal seam: delivery tells its journal of each message once when it accepts it and once
when it settles it, whatever happens in between (acks, failed calls, dead letters, duplicates,
retries, crashes, abandoned calls, a shutdown); the default journal costs nothing.

The recording journal here checks each event as it comes (nothing settled that was not
accepted, nothing settled more often than accepted) and what it recorded is compared with
``DeliveryStats`` at the end: the journal and the books agree.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terraphim_actors import (
    Agent,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    Envelope,
    MailboxConfig,
    MessageId,
    MessageOptions,
    MessageSystemConfig,
    OverflowPolicy,
    cast,
    open_message_system,
)
from terraphim_actors._core.settlement import Settlement
from terraphim_actors._delivery.dead_letters import DeadLetterReason
from terraphim_actors._delivery.journal import NO_JOURNAL, NoJournal
from terraphim_actors._delivery.ledger import JournalingLedger, Ledger, ledger_for
from terraphim_actors.errors import MailboxFull, MessagingError

GUARANTEES = list(DeliveryGuarantee)


class RecordingJournal:
    """A journal that keeps every event, and fails the test at once on an event out of turn."""

    def __init__(self) -> None:
        self.accepted_ids: collections.Counter[MessageId] = collections.Counter()
        self.settled_ids: collections.Counter[MessageId] = collections.Counter()
        self.outcomes: collections.Counter[Settlement] = collections.Counter()
        self._open: dict[MessageId, list[Envelope]] = collections.defaultdict(list)

    def accepted(self, envelope: Envelope) -> None:
        self.accepted_ids[envelope.id] += 1
        self._open[envelope.id].append(envelope)

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        self.settled_ids[message_id] += 1
        self.outcomes[outcome] += 1
        assert self.settled_ids[message_id] <= self.accepted_ids[message_id], (
            f"message {message_id} settled ({outcome}) more often than it was accepted"
        )
        self._open[message_id].pop()
        if not self._open[message_id]:
            del self._open[message_id]

    def started(self, envelope: Envelope) -> None:
        pass

    def filed(self, envelope: Envelope, reason: str, detail: str) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def unsettled(self) -> list[Envelope]:
        return [envelope for envelopes in self._open.values() for envelope in envelopes]

    def completed(self) -> list[tuple[str, MessageId, float]]:
        return []


class TestReplayedCopies:
    def test_each_replayed_copy_is_told_as_an_acceptance(self) -> None:
        """A replayed message is told to its journal again (which writes nothing for a
        message it holds), so that each copy's settlement matches an acceptance and the
        journal keeps the message until the last copy is settled."""
        journal = RecordingJournal()
        ledger = JournalingLedger(journal)
        envelope = cast(None, "x", recipient="worker")
        ledger.replayed(envelope)
        ledger.replayed(envelope.evolve(recipient="auditor"))
        ledger.acknowledged(envelope)
        assert journal.accepted_ids[envelope.id] == 2
        assert journal.settled_ids[envelope.id] == 1
        assert ledger.stats().sent == 2


class TestNoJournal:
    def test_the_default_ledger_makes_no_journal_calls(self) -> None:
        """Without a journal, delivery keeps a plain ledger: the seam costs the hot path
        nothing, not even a call into a journal that does nothing."""
        assert type(ledger_for(NO_JOURNAL)) is Ledger
        assert type(ledger_for(RecordingJournal())) is JournalingLedger

    def test_no_journal_keeps_nothing(self) -> None:
        journal = NoJournal()
        envelope = cast(None, "x")
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        assert list(journal.unsettled()) == []

    async def test_a_system_without_a_journal_has_the_plain_ledger(self) -> None:
        async with open_message_system() as system:
            assert type(system.delivery.ledger) is Ledger


class TestSettlementListener:
    def test_a_listener_hears_each_settlement_without_a_journal(self) -> None:
        """A settlement listener (a cluster node acknowledging what it took from JetStream)
        hears how each message ended, even with no journal to tell."""
        heard: list[tuple[MessageId, Settlement]] = []
        ledger = ledger_for(NO_JOURNAL, lambda message_id, how: heard.append((message_id, how)))
        handled, crashed = cast(None, "a", recipient="worker"), cast(None, "b", recipient="worker")
        ledger.accepted(handled)
        ledger.accepted(crashed)
        ledger.acknowledged(handled)
        ledger.dead_lettered(crashed, DeadLetterReason.RETRIES_EXHAUSTED, "it kept crashing")
        assert heard == [
            (handled.id, Settlement.ACKNOWLEDGED),
            (crashed.id, Settlement.DEAD_LETTERED),
        ]

    def test_a_message_the_shutdown_stopped_is_not_told_as_settled(self) -> None:
        """A message not handled before the system shut down stays unsettled for the listener
        as for the journal: JetStream, never acknowledged, delivers it again."""
        heard: list[Settlement] = []
        ledger = ledger_for(NO_JOURNAL, lambda _id, how: heard.append(how))
        envelope = cast(None, "x", recipient="worker")
        ledger.accepted(envelope)
        ledger.dead_lettered(envelope, DeadLetterReason.SYSTEM_STOPPED, "shut down")
        assert heard == []
        assert ledger.stats().pending == 0

    def test_a_forwarded_message_is_settled_in_the_books(self) -> None:
        """A message handed to the cluster is settled here as forwarded (its node counts it
        from its arrival), and the journal hears of it as of any settlement."""
        journal = RecordingJournal()
        ledger = JournalingLedger(journal)
        envelope = cast(None, "x", recipient="worker")
        ledger.accepted(envelope)
        ledger.forwarded(envelope)
        stats = ledger.stats()
        assert (stats.sent, stats.forwarded, stats.pending) == (1, 1, 0)
        assert journal.outcomes == {Settlement.FORWARDED: 1}


class Worker(Agent):
    """Acts on ``(number, action, crashes)``: crashes on its first ``crashes`` runs of that
    message, then does ``action``: "ok", "fail" (a call's caller is failed through ctx.caller),
    "slow" (works 2 s: a call with a 1 s timeout is abandoned)."""

    def __init__(self, runs: collections.Counter[int]) -> None:
        self.runs = runs

    async def _act(self, message: tuple[int, str, int], ctx: Context) -> None:
        number, action, crashes = message
        self.runs[number] += 1
        if self.runs[number] <= crashes:
            raise RuntimeError(f"crash {self.runs[number]} of message {number}")
        if action == "slow":
            await trio.sleep(2.0)
        elif action == "fail" and ctx.caller is not None:
            ctx.caller.fail(ValueError("refused"))

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await self._act(message, ctx)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        await self._act(message, ctx)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        await self._act(message, ctx)
        return message


@attrs.frozen
class Send:
    """One message of a scenario."""

    how: str
    guarantee: DeliveryGuarantee
    action: str
    crashes: int
    pause: float


sends = st.builds(
    Send,
    how=st.sampled_from(["cast", "cast_nowait", "info", "call", "resend", "nobody"]),
    guarantee=st.sampled_from(GUARANTEES),
    action=st.sampled_from(["ok", "ok", "fail", "slow"]),
    crashes=st.sampled_from([0, 0, 0, 1, 2, 5]),
    pause=st.sampled_from([0.0, 0.0, 0.01, 0.5]),
)


async def _send(system: Any, ref: Any, number: int, send: Send) -> None:
    options = MessageOptions(guarantee=send.guarantee)
    payload = (number, send.action, send.crashes)
    try:
        if send.how == "cast":
            await ref.cast(payload, options=options)
        elif send.how == "cast_nowait":
            ref.cast_nowait(payload, options=options)
        elif send.how == "info":
            await ref.info(payload, options=options)
        elif send.how == "call":
            await ref.call(payload, timeout=1.0, options=options)
        elif send.how == "resend":  # the same envelope twice: a duplicate under exactly-once
            envelope = cast(None, payload, options, recipient="worker")
            await system.send_message(envelope)
            await system.send_message(envelope.evolve(attempt=0))
        else:
            await system.send_message(cast(None, payload, options, recipient="nobody"))
    except MessagingError:
        pass  # a failed call, an at-most-once failure: settled all the same


@settings(
    deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=st.lists(sends, max_size=25), capacity=st.sampled_from([None, 2]))
def test_every_accepted_message_is_settled_exactly_once(
    scenario: list[Send], capacity: int | None
) -> None:
    """Across acks, failed and abandoned calls, crashes and their retries, duplicates, a
    missing recipient, a full mailbox and the shutdown, the journal hears of each accepted
    message exactly once more when it is settled, but for those the shutdown stopped (left
    unsettled for the next open), and its record matches the books."""
    journal = RecordingJournal()
    runs: collections.Counter[int] = collections.Counter()
    stats: list[Any] = []
    stopped: list[MessageId] = []

    async def main() -> None:
        config = MessageSystemConfig(
            delivery=DeliveryConfig(retry_delay=0.05, seed=1),
            max_restarts=10_000,  # crashes are the point: the root never gives up
            mailbox=MailboxConfig(capacity=capacity, overflow=OverflowPolicy.REJECT),
            journal=journal,
        )
        async with open_message_system(config) as system:
            ref = await system.spawn(Worker, runs, name="worker")
            async with trio.open_nursery() as senders:
                for number, send in enumerate(scenario):
                    await trio.sleep(send.pause)
                    senders.start_soon(_send, system, ref, number, send)
            if len(scenario) % 2:  # half the time, settle everything before the shutdown
                await trio.sleep(60.0)
                await trio.testing.wait_all_tasks_blocked()
                assert system.delivery.get_stats().pending == 0
                assert list(journal.unsettled()) == []
        stats.append(system.delivery.get_stats())
        stopped.extend(
            letter.envelope.id
            for letter in system.dead_letters
            if letter.reason is DeadLetterReason.SYSTEM_STOPPED
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    [books] = stats
    assert sorted(envelope.id for envelope in journal.unsettled()) == sorted(stopped)
    assert journal.accepted_ids == journal.settled_ids + collections.Counter(stopped)
    refused = journal.outcomes[Settlement.REFUSED]
    assert books.sent == journal.accepted_ids.total() - refused
    assert books.pending == 0
    assert books.acknowledged == journal.outcomes[Settlement.ACKNOWLEDGED]
    assert books.failed == journal.outcomes[Settlement.FAILED]
    assert books.duplicates_suppressed == journal.outcomes[Settlement.DUPLICATE]
    assert books.dead_lettered == journal.outcomes[Settlement.DEAD_LETTERED] + len(stopped)


class SelfSender(Agent):
    """On "fill", fills its own one-slot blocking mailbox, then casts to itself once more."""

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        ctx.self.cast_nowait("filler")
        try:
            await ctx.self.cast("one too many")
        except MailboxFull as error:
            return error
        return None

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        pass


async def test_a_refused_message_is_settled_as_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cast an agent makes into its own full blocking mailbox is refused at once: the
    journal hears of it as accepted and then refused, and the books do not count it as sent."""
    journal = RecordingJournal()
    async with open_message_system(MessageSystemConfig(journal=journal)) as system:
        ref = await system.spawn(
            SelfSender, mailbox=MailboxConfig(capacity=1, overflow=OverflowPolicy.BLOCK)
        )
        assert isinstance(await ref.call("fill"), MailboxFull)
        await trio.sleep(1.0)
        books = system.delivery.get_stats()
    assert journal.outcomes[Settlement.REFUSED] == 1
    assert journal.accepted_ids == journal.settled_ids
    assert books.sent == journal.accepted_ids.total() - 1
    assert books.pending == 0
