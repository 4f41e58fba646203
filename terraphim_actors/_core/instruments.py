"""Instruments: observers of what the system does, for tracing and metrics, that cost nothing
when none is installed.

The pattern is Trio's (``trio.abc.Instrument`` and its runner's ``Instruments``): an instrument
overrides the hooks it wants; the registry is a dict from hook name to the instruments that
override it, holding only hooks somebody listens to. A call site asks first, with one dict
membership test, and calls only on a hit::

    if "handler_started" in instruments:
        instruments.call("handler_started", agent_id, envelope)

So the hot path pays one lookup per event when no instrument is installed, and nothing else.
An instrument that raises is removed, with the error logged, and the system goes on: an
observer must never change what it observes.

Hooks run synchronously in the system's thread, at the moment of the event; they must be quick
and must not block (hand heavy work to a task or a thread of your own).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidConfig
from .bounded_repr import LazyText, bounded_repr

__all__ = ["HOOKS", "MESSAGE_HOOKS", "Instrument", "Instruments", "instruments_tuple"]

logger = logging.getLogger("terraphim_actors.instruments")


class Instrument:
    """The base class of an observer of the system: override the hooks you need.

    Install instances with ``MessageSystemConfig(instruments=[...])``. Each hook is called at
    the moment of its event, in the system's thread; a hook that raises disables its
    instrument (logged at ERROR), and the system goes on. Hooks receive the library's own
    objects: read them, never change them.
    """

    __slots__ = ()

    def message_accepted(self, envelope: Any) -> None:
        """The delivery layer took ``envelope`` (an ``Envelope``) for delivery: from now on it
        is delivered, or ends as a dead letter. Called once per message, not per retry."""

    def message_delivered(self, envelope: Any) -> None:
        """``envelope`` was put into its recipient's mailbox (on every attempt that got
        there: a retried message is delivered again). Told when the put returns: after a put
        its sender awaited (``await ref.cast``), the recipient may have begun already."""

    def handler_started(self, agent_id: Any, envelope: Any) -> None:
        """The agent ``agent_id`` (an ``AgentId``) starts handling ``envelope``."""

    def handler_finished(self, agent_id: Any, envelope: Any, error: BaseException | None) -> None:
        """The agent ``agent_id`` finished handling ``envelope``: ``error`` is what the
        handler raised, or ``None`` if it returned; a ``trio.Cancelled`` when it was cancelled
        from outside (its instance stopped, or the caller of an abandoned call gone), so that
        every ``handler_started`` has its end (a span is always closed)."""

    def retry_scheduled(self, envelope: Any, delay: float) -> None:
        """``envelope`` failed and will be tried again in ``delay`` seconds (its ``attempt``
        is the redelivery it will be)."""

    def admission_waited(self, agent_id: Any, envelope: Any, waited: float) -> None:
        """``envelope``, which waited for the admission budgets of the agent ``agent_id``
        (see ``spawn(..., admission=...)``), was let through after ``waited`` seconds."""

    def dead_lettered(self, letter: Any) -> None:
        """A message was given up on: ``letter`` is the ``DeadLetter`` filed for it."""

    def agent_started(self, agent_id: Any) -> None:
        """An instance of the agent ``agent_id`` started (its ``on_start`` returned)."""

    def agent_exited(self, agent_id: Any, reason: Any) -> None:
        """An instance of the agent ``agent_id`` ended, for ``reason`` (an ``ExitReason``)."""

    def outgoing_headers(self, kind: Any, recipient: Any) -> Mapping[str, str] | None:
        """Headers to add to a message of ``kind`` (a ``MessageKind``) being sent now to
        ``recipient``, or ``None``: asked where its envelope is built, in the sender's task
        (so its context variables, a current span among them, are the sender's). Messages
        never change once built, so this is the only moment to add to them.

        Strings to strings. The sender's own headers win: a key it set is kept as it set it.
        Overriding this hook is what makes sends ask; while no instrument does, a send
        through a ref pays one ``is`` test for it (a ref looks when it is made: instruments
        are installed with the system), and ``system.send_message`` one dict lookup."""
        return None

    def system_opened(self, system: Any) -> None:
        """The instrument was installed in ``system`` (a ``MessageSystem``), which
        ``open_message_system`` has built and opens now, before any agent starts: for an
        instrument that reads it later (``system.get_stats()``, say, for metrics)."""


#: The names of the hooks, in the order of a message's life.
HOOKS: tuple[str, ...] = (
    "message_accepted",
    "message_delivered",
    "handler_started",
    "handler_finished",
    "retry_scheduled",
    "admission_waited",
    "dead_lettered",
    "agent_started",
    "agent_exited",
    "outgoing_headers",
    "system_opened",
)


#: A key present while an instrument observes messages on their way in (accepted or
#: delivered): the common send, which is both at once, checks it alone.
MESSAGE_HOOKS = "message_accepted|message_delivered"


class Instruments(dict[str, dict[Instrument, None]]):
    """The installed instruments, by the hooks they override.

    A hook name is a key only while some instrument overrides it, so that
    ``"hook" in instruments`` is the whole cost of an event nobody observes. The values are
    dicts used as ordered sets: instruments are called in the order they were added.
    """

    __slots__ = ()

    def __init__(self, instruments: Any = ()) -> None:
        super().__init__()
        for instrument in instruments:
            self.add_instrument(instrument)

    def add_instrument(self, instrument: Instrument) -> None:
        """Install ``instrument`` for the hooks it overrides (again: nothing changes)."""
        for name in HOOKS:
            if getattr(type(instrument), name) is not getattr(Instrument, name):
                self.setdefault(name, {})[instrument] = None
                if name in ("message_accepted", "message_delivered"):
                    self.setdefault(MESSAGE_HOOKS, {})[instrument] = None

    def remove_instrument(self, instrument: Instrument) -> None:
        """Uninstall ``instrument`` from every hook.

        Raises:
            KeyError: ``instrument`` is not installed.
        """
        found = False
        for name in list(self):
            hooked = self[name]
            if instrument in hooked:
                found = True
                del hooked[instrument]
                if not hooked:
                    del self[name]
        if not found:
            raise KeyError(instrument)

    def accepted_and_delivered(self, envelope: Any) -> None:
        """``message_accepted`` then ``message_delivered``, for a message put into its mailbox
        as it was accepted. Call only after ``MESSAGE_HOOKS in self``."""
        if "message_accepted" in self:
            self.call("message_accepted", envelope)
        if "message_delivered" in self:
            self.call("message_delivered", envelope)

    def outgoing_headers(
        self, kind: Any, recipient: Any, given: Mapping[str, str]
    ) -> Mapping[str, str]:
        """The headers of a message of ``kind`` to ``recipient`` that its sender gave
        ``given``: those, with what each instrument's ``outgoing_headers`` adds (the sender's
        keys win), read-only; ``given`` itself when nothing is added. An instrument that
        raises, or returns anything but a mapping of strings to strings, is removed as in
        :meth:`call`. (A ref that saw the hook listened to asks again after its last
        listener was removed: then nothing is added.)"""
        added: dict[str, str] | None = None
        for instrument in list(self.get("outgoing_headers", ())):
            try:
                extra = instrument.outgoing_headers(kind, recipient)
                if extra is None:
                    continue
                if not isinstance(extra, Mapping) or not all(
                    k.__class__ is str and v.__class__ is str for k, v in extra.items()
                ):
                    raise TypeError(f"headers map str to str, got {bounded_repr(extra)}")
            except Exception:
                self._failed(instrument, "outgoing_headers")
                continue
            if added is None:
                added = dict(extra)
            else:
                added.update(extra)
        if not added:
            return given
        added.update(given)
        return types.MappingProxyType(added)

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every instrument that overrides it, with ``args``.

        An instrument that raises is removed and the error logged; the others are still
        called, and the caller never sees the error. Call only after ``hook in self``.
        """
        for instrument in list(self[hook]):
            try:
                getattr(instrument, hook)(*args)
            except Exception:  # unlike Trio, KeyboardInterrupt and SystemExit go through
                self._failed(instrument, hook)

    def _failed(self, instrument: Instrument, hook: str) -> None:
        """Remove ``instrument``, which raised in ``hook``, and log its error (being handled)."""
        self.remove_instrument(instrument)
        logger.exception(
            "instrument %s raised in %s and has been removed; the system goes on",
            LazyText(bounded_repr, instrument),
            hook,
        )


def instruments_tuple(instruments: Any) -> tuple[Instrument, ...]:
    """``instruments`` as a tuple, checked: for ``MessageSystemConfig(instruments=...)``.

    Raises:
        InvalidConfig: ``instruments`` is not an iterable of ``Instrument`` instances.
    """
    try:
        items = tuple(instruments)
    except TypeError:
        raise InvalidConfig(
            f"instruments must be a list of Instrument instances, got {bounded_repr(instruments)}"
        ) from None
    for item in items:
        if not isinstance(item, Instrument):
            raise InvalidConfig(
                f"instruments must be Instrument instances, got {bounded_repr(item)}"
            )
    return items
