"""The dead letter office: recent letters kept within a bound, every letter counted."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from agents import AT_MOST_ONCE, HUGE_PROMPT

from terraphim_actors import (
    Agent,
    Context,
    DeadLetter,
    DeadLetterReason,
    MessageSystem,
    cast,
    open_message_system,
)
from terraphim_actors._delivery.dead_letters import DETAIL_LIMIT, DeadLetterOffice


class TestDeadLetterOffice:
    def test_empty_office(self) -> None:
        """A new office keeps nothing and has counted nothing."""
        office = DeadLetterOffice(capacity=5)
        assert office.recent() == ()
        assert office.total == 0
        assert office.by_reason() == {}

    def test_record_keeps_envelope_reason_and_detail(self) -> None:
        """A recorded letter carries its envelope, its reason and the detail given."""
        office = DeadLetterOffice(capacity=5)
        envelope = cast(None, "lost", recipient="nobody")
        office.record(envelope, DeadLetterReason.NOT_FOUND, "no agent named 'nobody'")
        (letter,) = office.recent()
        assert isinstance(letter, DeadLetter)
        assert letter.envelope is envelope
        assert letter.reason is DeadLetterReason.NOT_FOUND
        assert letter.detail == "no agent named 'nobody'"

    async def test_letter_is_stamped_with_trio_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A letter records the Trio time it was filed."""
        office = DeadLetterOffice(capacity=5)
        await trio.sleep(4.0)
        office.record(cast(None, 1), DeadLetterReason.EXPIRED)
        assert office.recent()[0].at == trio.current_time()

    def test_recent_is_bounded_and_keeps_the_newest(self) -> None:
        """Beyond the capacity the oldest letters are let go; recent() is oldest first."""
        office = DeadLetterOffice(capacity=3)
        for number in range(5):
            office.record(cast(None, number), DeadLetterReason.UNHANDLED)
        assert [letter.envelope.payload for letter in office.recent()] == [2, 3, 4]

    def test_total_counts_letters_no_longer_kept(self) -> None:
        """``total`` counts every letter ever filed, not only the kept ones."""
        office = DeadLetterOffice(capacity=2)
        for number in range(7):
            office.record(cast(None, number), DeadLetterReason.MAILBOX_FULL)
        assert len(office.recent()) == 2
        assert office.total == 7

    def test_by_reason_counts_every_letter_per_reason(self) -> None:
        """``by_reason`` counts all letters filed for each reason, kept or not."""
        office = DeadLetterOffice(capacity=1)
        reasons = [
            DeadLetterReason.NOT_FOUND,
            DeadLetterReason.EXPIRED,
            DeadLetterReason.NOT_FOUND,
            DeadLetterReason.AGENT_STOPPED,
            DeadLetterReason.NOT_FOUND,
        ]
        for reason in reasons:
            office.record(cast(None, reason), reason)
        assert office.by_reason() == {
            DeadLetterReason.NOT_FOUND: 3,
            DeadLetterReason.EXPIRED: 1,
            DeadLetterReason.AGENT_STOPPED: 1,
        }
        assert office.total == len(reasons)

    def test_by_reason_is_a_copy(self) -> None:
        """Changing the returned counts does not change the office's."""
        office = DeadLetterOffice(capacity=1)
        office.record(cast(None, 1), DeadLetterReason.EXPIRED)
        counts = office.by_reason()
        counts[DeadLetterReason.EXPIRED] = 100
        assert office.by_reason() == {DeadLetterReason.EXPIRED: 1}
        assert office.total == 1

    def test_a_long_detail_is_cut_to_the_bound(self) -> None:
        """A detail is kept (and logged) for every letter: it is cut to ``DETAIL_LIMIT``."""
        office = DeadLetterOffice(capacity=5)
        office.record(cast(None, "lost"), DeadLetterReason.NOT_FOUND, HUGE_PROMPT)
        (letter,) = office.recent()
        assert len(letter.detail) == DETAIL_LIMIT
        assert letter.detail.endswith("...")


class CrashesWithThePrompt(Agent):
    """Crashes on every cast with an error that quotes the whole payload."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise ValueError(message)


class TestDeadLettersOfHugeMessages:
    async def test_the_detail_of_a_crash_on_a_huge_payload_stays_small(
        self, quiet_crash_logs: None
    ) -> None:
        """A handler error quoting a 10 MB prompt gives a dead letter of a few hundred
        characters of detail, and a short repr of its envelope."""
        async with open_message_system(AT_MOST_ONCE) as system:
            ref = await system.spawn(CrashesWithThePrompt)
            await ref.cast(HUGE_PROMPT)
            await trio.testing.wait_all_tasks_blocked()
            [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.HANDLER_CRASHED
        assert "ValueError" in letter.detail
        assert len(letter.detail) <= DETAIL_LIMIT
        assert len(repr(letter.envelope)) < 400


SECRET = "sk-live-0123456789"


class RedactsAndCrashes(Agent):
    """Crashes on every cast; shows its messages as ``[redacted]``."""

    def format_message(self, payload: Any) -> str:
        return "[redacted]"

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        raise ValueError("refused")


class TestDeadLettersUseFormatMessage:
    async def test_a_dead_letter_is_detailed_and_logged_through_format_message(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A redacting ``format_message`` keeps a secret out of a dead letter's detail and
        its log line, which shows the message as ``format_message`` gives it."""
        with caplog.at_level(logging.DEBUG, logger="terraphim_actors.dead_letters"):
            async with open_message_system(AT_MOST_ONCE) as system:
                ref = await system.spawn(RedactsAndCrashes)
                await ref.cast({"prompt": SECRET})
                await trio.testing.wait_all_tasks_blocked()
                [letter] = system.dead_letters
        assert SECRET not in letter.detail
        [line] = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
        assert SECRET not in line
        assert "[redacted]" in line


class TestResendingADeadLetter:
    async def test_resending_a_dead_lettered_envelope_gets_a_fresh_retry_budget(
        self, system: MessageSystem, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Dead letters "keep the envelope" so that it can be inspected or sent again. The delivery
        layer counts attempts inside the envelope and never resets them, so sending it again
        (max_retries=3) dead-letters it on its first failure, with no retry at all."""
        await system.send_message(cast(None, "x", recipient="later"))
        await trio.sleep(5)
        [letter] = system.dead_letters
        assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
        before = system.delivery.get_stats().retried
        await system.send_message(letter.envelope)
        assert system.delivery.get_stats().retried == before + 1  # its first retry is scheduled
