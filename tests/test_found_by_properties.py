"""Bugs the property tests of the test kit found, each as the shrunk example that shows it.

Each test states the contract (DESIGN.md, "Bad input": a wrong value raises a clear, typed
error from ``terraphim_actors.errors`` and never corrupts state) and fails until the library
keeps it. Found by ``tests/test_bad_input.py`` and by probing the API it drives.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from terraphim_actors import (
    Agent,
    AgentId,
    Context,
    Mailbox,
    MessageSystem,
    MessageSystemConfig,
    call,
    cast,
    open_message_system,
)
from terraphim_actors.errors import InvalidConfig, MessagingError


async def open_and_close(**config: Any) -> None:
    """Open a system with ``config`` and close it again."""
    async with open_message_system(MessageSystemConfig(**config)):
        await trio.lowlevel.checkpoint()


class Echo(Agent):
    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return message


async def test_subscribe_with_something_not_a_ref_raises_invalid_config(
    system: MessageSystem,
) -> None:
    """``system.subscribe("x")`` raises ``AttributeError: 'str' object has no attribute
    '_agent'``; ``system.stop("x")`` raises ``InvalidConfig`` for the same mistake."""
    with pytest.raises(InvalidConfig):
        system.subscribe("x")  # type: ignore[arg-type]


async def test_subscribe_dead_letters_with_something_not_a_ref_raises_invalid_config(
    system: MessageSystem,
) -> None:
    """``system.subscribe_dead_letters("x")`` raises ``AttributeError`` too."""
    with pytest.raises(InvalidConfig):
        system.subscribe_dead_letters("x")  # type: ignore[arg-type]


async def test_looking_up_an_unhashable_name_raises_a_typed_error(system: MessageSystem) -> None:
    """``system.ref([1])`` raises ``TypeError: unhashable type: 'list'``."""
    with pytest.raises(MessagingError):
        system.ref([1])  # type: ignore[arg-type]


async def test_an_envelope_with_an_unhashable_recipient_raises_a_typed_error(
    system: MessageSystem,
) -> None:
    """``send_message`` of an envelope addressed to ``[5]`` raises ``TypeError: unhashable
    type: 'list'`` from the registry lookup."""
    with pytest.raises(MessagingError):
        await system.send_message(cast(None, "x", recipient=[5]))  # type: ignore[arg-type]


async def test_a_call_to_a_recipient_neither_id_nor_name_raises_a_typed_error(
    system: MessageSystem,
) -> None:
    """A call addressed to ``3.5`` is retried as a missing recipient, and giving up on it
    builds ``DeliveryFailed(f"{envelope!r} ...")``, whose ``repr`` of the recipient raises
    ``AttributeError: 'float' object has no attribute 'name'`` out of ``send_message``."""
    envelope, _ = call(None, "x", 5.0, recipient=3.5)  # type: ignore[arg-type]
    with pytest.raises(MessagingError):
        await system.send_message(envelope)


async def test_a_cast_to_a_recipient_neither_id_nor_name_is_refused_at_once(
    system: MessageSystem,
) -> None:
    """``send_message(cast(None, "x", recipient=5))`` is accepted, retried as a missing name
    that may yet be spawned (no int ever is), and becomes a dead letter whose ``repr`` raises
    ``AttributeError``: the bad address should be refused when it is sent."""
    with pytest.raises(MessagingError):
        await system.send_message(cast(None, "x", recipient=5))  # type: ignore[arg-type]


async def test_selective_receive_with_no_predicate_raises_invalid_config() -> None:
    """``mailbox.receive_matching(3)`` raises ``TypeError: 'int' object is not callable``
    once a message is waiting; ``receive_timeout(-1)`` raises ``InvalidConfig``."""
    mailbox = Mailbox(AgentId())
    mailbox.send_nowait(cast(None, "waiting"))
    with pytest.raises(InvalidConfig):
        await mailbox.receive_matching(3)  # type: ignore[arg-type]


async def test_a_dead_letter_capacity_beyond_ssize_t_raises_invalid_config() -> None:
    """``MessageSystemConfig(dead_letter_capacity=2**63)`` passes its validator, then
    ``open_message_system`` fails with ``OverflowError: Python int too large to convert to C
    ssize_t`` (from ``deque(maxlen=...)``) inside an ``ExceptionGroup``."""
    with pytest.raises(InvalidConfig):
        await open_and_close(dead_letter_capacity=2**63)


async def test_spawn_pool_with_a_bad_intensity_raises_invalid_config(
    system: MessageSystem,
) -> None:
    """``spawn_pool`` documents ``InvalidConfig`` for an argument out of range, but
    ``max_restarts=-1`` (or ``max_seconds=0``) raises ``supervisor.InvalidSpec``, which an
    ``except InvalidConfig`` does not catch."""
    with pytest.raises(InvalidConfig):
        await system.spawn_pool(Echo, size=1, max_restarts=-1)
