"""The reply side of a call: a one-shot slot, deadlines, and deferred replies.

A call's reply travels through a :class:`ReplyHandle`, not through the caller's mailbox: the
waiting caller parks on the handle and is woken with ``trio.lowlevel.reschedule``, which costs
less than a second channel and cannot deliver a reply to the wrong call. A handle is answered at
most once; once its caller gave up (timeout or cancellation), any later answer is dropped.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import trio

from .errors import CallTimeout, ReplyAlreadySent

__all__ = ["ReplyHandle"]


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

    __slots__ = ("_error", "_state", "_value", "_waiter", "deadline")

    def __init__(self, deadline: float = math.inf) -> None:
        #: Trio time after which the caller no longer waits.
        self.deadline = deadline
        self._state = _State.PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiter: trio.lowlevel.Task | None = None

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
            return self._answered_late()
        self._value = value
        self._wake()
        return True

    def fail(self, error: BaseException) -> bool:
        """Answer the call with an error that the caller will see raised.

        Returns and raises as :meth:`reply`.
        """
        if self._state is not _PENDING:
            return self._answered_late()
        self._error = error
        self._wake()
        return True

    def abandon(self) -> None:
        """Give up on the reply: any later answer is dropped."""
        if self._state is _State.PENDING:
            self._state = _State.ABANDONED

    def expire(self) -> None:
        """The caller's deadline has passed: give up on the reply, and wake a waiting caller,
        whose wait raises ``CallTimeout``. Does nothing once answered."""
        if self._state is _State.PENDING:
            self._state = _State.ABANDONED
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                trio.lowlevel.reschedule(waiter)

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

    def _answered_late(self) -> bool:
        """An answer to a handle no longer pending: dropped if its caller gave up."""
        if self._state is _State.ABANDONED:
            return False
        raise ReplyAlreadySent("this call has already been answered")

    def _wake(self) -> None:
        self._state = _State.ANSWERED
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        self.abandon()
        return trio.lowlevel.Abort.SUCCEEDED
