"""The ``outgoing_headers`` hook: an instrument adds headers to a message as it is built, in the
sender's task, for every way of sending; the sender's own headers stay as they were, and a
faulty instrument is removed without the send noticing."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

import pytest
import trio

from terraphim_actors import (
    Agent,
    Context,
    Envelope,
    Instrument,
    MessageKind,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors._core.instruments import Instruments

#: What the sending task is doing, as a tracer's current span would say.
doing: contextvars.ContextVar[str] = contextvars.ContextVar("doing", default="nothing")


class Stamps(Instrument):
    """Adds what the sending task is doing, and writes down what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[MessageKind, Any]] = []

    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        self.asked.append((kind, recipient))
        return {"doing": doing.get(), "stamped": "yes"}


class Keeps(Agent):
    """Keeps the headers of every message it handles, and passes a cast on when told to."""

    def __init__(self, seen: list[Mapping[str, str]]) -> None:
        self.seen = seen

    async def handle_cast(self, msg: Any, ctx: Context) -> None:
        self.seen.append(ctx.envelope.headers)
        if msg == "pass on":
            doing.set("passing on")
            await ctx.system.whereis("last").cast("passed")  # type: ignore[union-attr]

    async def handle_call(self, msg: Any, ctx: Context) -> Any:
        return dict(ctx.envelope.headers)

    async def handle_info(self, msg: Any, ctx: Context) -> None:
        self.seen.append(ctx.envelope.headers)


class Keeper:
    """What a ``Keeps`` agent saw."""

    def __init__(self) -> None:
        self.seen: list[Mapping[str, str]] = []


async def spawn_keeper(system: Any, name: str) -> tuple[Any, Keeper]:
    keeper = Keeper()
    return await system.spawn(Keeps, keeper.seen, name=name), keeper


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


class TestAdded:
    async def test_every_send_through_a_ref_carries_them(self) -> None:
        """cast, cast_nowait, info and call each get the instrument's headers, made in the
        sender's task (its context variables are the ones read)."""
        stamps = Stamps()
        async with open_message_system(MessageSystemConfig(instruments=[stamps])) as system:
            ref, keeper = await spawn_keeper(system, "keeper")
            doing.set("asking")
            await ref.cast("a")
            ref.cast_nowait("b")
            await ref.info("c")
            answer = await ref.call("d")
            await settle()
        assert answer == {"doing": "asking", "stamped": "yes"}
        assert [dict(headers) for headers in keeper.seen] == [answer] * 3
        assert [kind for kind, _ in stamps.asked] == [
            MessageKind.CAST,
            MessageKind.CAST,
            MessageKind.INFO,
            MessageKind.CALL,
        ]
        assert {recipient for _, recipient in stamps.asked} == {ref.id}

    async def test_a_handlers_sends_are_made_in_its_task(self) -> None:
        """What a handler sends is stamped with what its own task is doing."""
        async with open_message_system(MessageSystemConfig(instruments=[Stamps()])) as system:
            first, _ = await spawn_keeper(system, "first")
            _, last = await spawn_keeper(system, "last")
            await first.cast("pass on")
            await settle()
        assert last.seen == [{"doing": "passing on", "stamped": "yes"}]

    async def test_send_message_keeps_the_senders_own_headers(self) -> None:
        """An envelope built with headers keeps them, the same keys included; the instrument
        adds only what is missing."""
        async with open_message_system(MessageSystemConfig(instruments=[Stamps()])) as system:
            ref, keeper = await spawn_keeper(system, "keeper")
            mine = {"tenant": "acme", "stamped": "by me"}
            await system.send_message(
                Envelope(kind=MessageKind.CAST, payload="x", recipient=ref.id, headers=mine)
            )
            await settle()
        assert keeper.seen == [{"tenant": "acme", "stamped": "by me", "doing": "nothing"}]

    async def test_headers_are_read_only(self) -> None:
        """Messages do not change: neither do the headers an instrument gave them."""
        async with open_message_system(MessageSystemConfig(instruments=[Stamps()])) as system:
            ref, keeper = await spawn_keeper(system, "keeper")
            await ref.cast("a")
            await settle()
        with pytest.raises(TypeError):
            keeper.seen[0]["doing"] = "changed"  # type: ignore[index]

    async def test_without_the_hook_a_send_has_no_headers(self) -> None:
        """No instrument that adds headers: a message has none (the shared empty mapping)."""
        async with open_message_system() as system:
            ref, keeper = await spawn_keeper(system, "keeper")
            await ref.cast("a")
            await settle()
        assert keeper.seen == [{}]


class Raises(Instrument):
    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        raise RuntimeError("instrument bug")


class NotStrings(Instrument):
    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        return {"attempt": 1}  # type: ignore[dict-item]


class Nothing(Instrument):
    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        return None


class TestFaults:
    @pytest.mark.parametrize("faulty", [Raises, NotStrings], ids=["raises", "not strings"])
    async def test_a_faulty_instrument_is_removed_and_the_send_goes_on(
        self, faulty: type[Instrument], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An instrument that raises, or gives anything but strings to strings, is removed and
        logged; the message goes with the others' headers, and later sends ask it no more."""
        broken, stamps = faulty(), Stamps()
        config = MessageSystemConfig(instruments=[broken, stamps])
        with caplog.at_level(logging.ERROR, logger="terraphim_actors.instruments"):
            async with open_message_system(config) as system:
                ref, keeper = await spawn_keeper(system, "keeper")
                await ref.cast("a")
                await ref.cast("b")
                await settle()
                assert broken not in system.instruments.get("outgoing_headers", {})
        assert [dict(headers) for headers in keeper.seen] == [
            {"doing": "nothing", "stamped": "yes"}
        ] * 2
        assert [record.message for record in caplog.records if "outgoing_headers" in record.message]

    def test_nothing_added_gives_back_the_senders_headers(self) -> None:
        """An instrument with nothing to add leaves the sender's mapping itself."""
        instruments = Instruments([Nothing()])
        given = {"tenant": "acme"}
        assert instruments.outgoing_headers(MessageKind.CAST, None, given) is given
