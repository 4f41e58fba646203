"""The reply side of a call: a one-shot slot, deadlines, and deferred replies.

A call's reply travels through a :class:`ReplyHandle`, not through the caller's mailbox: the
waiting caller parks on the handle and is woken with ``trio.lowlevel.reschedule``, which costs
less than a second channel and cannot deliver a reply to the wrong call. A handle is answered at
most once; once its caller gave up (timeout or cancellation), any later answer is dropped,
except for resends of an exactly-once call, which a :class:`KeptAnswer` gives it to.

It sits in ``_core``, beside the envelope, because an envelope carries a call's handle and the
``call`` builder makes one: every layer that reads ``envelope.reply`` uses most of the handle,
so a protocol in its place would only repeat the class.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any

import trio

from ..errors import CallTimeout, ReplyAlreadySent

if TYPE_CHECKING:
    from .protocols import CallServer

__all__ = ["KeptAnswer", "ReplyHandle"]


class _State(enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    ABANDONED = "abandoned"


# A global lookup is cheaper than an enum's attribute, and this is the path of every reply.
_PENDING = _State.PENDING


class ReplyHandle:
    """The one-shot slot that carries the reply of one call back to its one caller.

    The callee side answers with :meth:`reply` or :meth:`fail` (sync: answering never blocks);
    the caller side awaits the handle, which returns the reply, raises the failure, or raises
    :class:`~terraphim_actors.errors.CallTimeout` at the deadline. A caller that gave up
    abandons the handle, and a late answer is then dropped.
    """

    __slots__ = ("_error", "_kept", "_state", "_value", "_waiter", "deadline", "expired", "serving")

    def __init__(self, deadline: float = math.inf) -> None:
        #: Trio time after which the caller no longer waits.
        self.deadline = deadline
        self._state = _State.PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiter: trio.lowlevel.Task | None = None
        self._kept: KeptAnswer | None = None
        #: The handler answering the call (its agent's gen_server), told when its caller gives
        #: up, so that it can cancel work nobody waits for.
        self.serving: CallServer | None = None
        #: True once given up on at the deadline (not by the caller's own cancellation).
        self.expired = False

    def __repr__(self) -> str:
        return f"<ReplyHandle {self._state.value}>"

    @property
    def pending(self) -> bool:
        """True while the caller still waits and nobody has answered."""
        return self._state is _PENDING

    @property
    def replied(self) -> bool:
        """True once answered with a value (not an error)."""
        return self._state is _State.ANSWERED and self._error is None

    @property
    def failed(self) -> bool:
        """True once answered with an error."""
        return self._state is _State.ANSWERED and self._error is not None

    @property
    def value(self) -> Any:
        """The value the call was answered with (``None`` until :attr:`replied`)."""
        return self._value

    @property
    def abandoned(self) -> bool:
        """True once the caller gave up: an answer now would be dropped."""
        return self._state is _State.ABANDONED

    def reply(self, value: Any) -> bool:
        """Answer the call with ``value``.

        Returns:
            True if the answer reached a waiting (or not yet waiting) caller, False if the
            caller had already given up and the answer was dropped.

        Raises:
            ReplyAlreadySent: the call was answered before.
        """
        if self._state is not _PENDING:
            return self._answered_late(value, None)
        self._value = value
        self._wake()
        return True

    def fail(self, error: BaseException) -> bool:
        """Answer the call with an error that the caller will see raised.

        Returns and raises as :meth:`reply`.
        """
        if self._state is not _PENDING:
            return self._answered_late(None, error)
        self._error = error
        self._wake()
        return True

    def keep_answer(self) -> KeptAnswer:
        """Keep this call's answer for resends of it (an exactly-once call whose reply is
        deferred), even once its caller gave up; returns the record that keeps it.

        Only the first answer counts, however it comes: ``reply``, ``fail``, or the agent's
        stop. Calling this again returns the same record.
        """
        kept = self._kept
        if kept is None:
            kept = self._kept = KeptAnswer()
            if self._state is _State.ANSWERED:
                kept.settle(self._value, self._error)
        return kept

    def abandon(self) -> None:
        """Give up on the reply: any later answer is dropped, and the handler answering it,
        if one runs, is told."""
        if self._state is _State.PENDING:
            self._state = _State.ABANDONED
            serving = self.serving
            if serving is not None:
                serving.call_abandoned(self)

    def expire(self) -> None:
        """The caller's deadline has passed: give up on the reply, and wake a waiting caller,
        whose wait raises ``CallTimeout``. Does nothing once answered."""
        if self._state is _State.PENDING:
            self.expired = True
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                trio.lowlevel.reschedule(waiter)
            self.abandon()

    async def wait(self) -> Any:
        """Wait for the answer, at most until :attr:`deadline`.

        Raises:
            CallTimeout: no answer before the deadline.
            BaseException: whatever the callee answered with :meth:`fail`.
        """
        if self._state is _State.ANSWERED:
            # Answered before the caller waited: the answer stands even past the deadline,
            # since ``reply`` already told the callee that it reached the caller.
            return await self.wait_unbounded()
        with trio.move_on_at(self.deadline):
            return await self.wait_unbounded()
        self.abandon()
        raise CallTimeout(f"no reply before the call's deadline ({self.deadline:.3f})")

    async def wait_unbounded(self) -> Any:
        """Wait for the answer with no deadline of its own (the caller's scopes still apply).

        Raises:
            trio.BusyResourceError: another task is already waiting on this handle.
        """
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already waiting for this reply")
        if self._state is _State.PENDING:
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            await trio.lowlevel.checkpoint()
        if self._error is not None:
            raise self._error
        if self._state is not _State.ANSWERED:
            raise CallTimeout("this reply was given up on before")
        return self._value

    def __await__(self) -> Any:
        return self.wait().__await__()

    def _answered_late(self, value: Any, error: BaseException | None) -> bool:
        """An answer to a handle no longer pending: dropped if its caller gave up (but kept
        for the call's resends, if its answer is kept)."""
        if self._state is _State.ABANDONED:
            if self._kept is not None:
                self._kept.settle(value, error)
            return False
        raise ReplyAlreadySent("this call has already been answered")

    def _wake(self) -> None:
        self._state = _State.ANSWERED
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)
        if self._kept is not None:
            self._kept.settle(self._value, self._error)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        self.abandon()
        return trio.lowlevel.Abort.SUCCEEDED


class KeptAnswer:
    """The answer of an exactly-once call whose reply was deferred, kept for resends of it.

    A client resends a call (same message id) mostly because it gave up waiting, so the first
    caller may be gone when the deferred answer is given, and a resend may arrive before or
    after that answer. The dedup window keeps this record in place of the reply: it learns the
    answer (a value or an error) whenever it is given, and answers each resend's handle at once
    if the answer is known, else as soon as it is. A resend still ends at its own deadline.
    """

    __slots__ = ("_error", "_value", "_waiting", "given")

    def __init__(self) -> None:
        #: True once the call was answered, with a value or an error.
        self.given = False
        self._value: Any = None
        self._error: BaseException | None = None
        #: Handles of resends that arrived before the answer.
        self._waiting: list[ReplyHandle] = []

    def __repr__(self) -> str:
        return f"<KeptAnswer {'given' if self.given else 'not given yet'}>"

    def settle(self, value: Any, error: BaseException | None) -> None:
        """Keep the answer (``error`` if it is not ``None``, else ``value``), and pass it to
        the resends waiting for it. Only the first answer counts."""
        if self.given:
            return
        self.given = True
        self._value = value
        self._error = error
        waiting, self._waiting = self._waiting, []
        for handle in waiting:
            self.answer(handle)

    def answer(self, handle: ReplyHandle) -> None:
        """Answer a resend's ``handle`` with the call's answer: now if it is known, else when
        it is given (unless that resend's caller has given up by then)."""
        if not self.given:
            # Resends whose callers gave up meanwhile need not be kept.
            self._waiting = [waiting for waiting in self._waiting if waiting.pending]
            self._waiting.append(handle)
        elif handle.pending:
            if self._error is not None:
                handle.fail(self._error)
            else:
                handle.reply(self._value)
