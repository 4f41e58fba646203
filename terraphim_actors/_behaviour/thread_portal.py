"""The way into a message system from another thread: ``system.from_thread``.

A system belongs to the thread of its Trio run (see ``_core.threads``), yet blocking code beside it
(a worker thread from ``trio.to_thread.run_sync``, a thread of a library that knows nothing of
Trio) must reach its agents. The portal hands each call and cast to the system's thread with
``trio.from_thread.run`` and the system's own Trio token, so it works from any thread, whether
Trio started it or not, and the thread blocks until the system's thread has its answer.

It sits with the refs it sends through, below the system, so that ``SystemApi`` (what
``ctx.system`` is typed by) can name it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import trio

from .._core.messages import MessageOptions, Priority
from .._core.threads import current_thread_id
from ..errors import SystemClosed, WrongThread

if TYPE_CHECKING:
    from .refs import AgentRef

__all__ = ["ThreadPortal"]


class ThreadPortal:
    """Blocking ``call`` and ``cast`` for threads other than the system's (``system.from_thread``).

    Each runs ``ref.call`` or ``ref.cast`` in the system's thread and blocks the calling thread
    until it returns, then returns or raises what it did, with the same types: what holds for
    a send from the system's thread holds for one through the portal. Used from the system's
    own thread they raise ``WrongThread``: blocking that thread would stop the very run that
    must answer. Once the system has shut down they raise ``SystemClosed``.
    """

    __slots__ = ("_closed", "_thread_id", "_trio_token")

    def __init__(self, thread_id: int, trio_token: trio.lowlevel.TrioToken) -> None:
        self._thread_id = thread_id
        self._trio_token = trio_token
        self._closed = False

    def __repr__(self) -> str:
        return f"<ThreadPortal {'closed' if self._closed else 'open'}>"

    def close(self) -> None:
        """Refuse every later call and cast with ``SystemClosed`` (the system has shut down)."""
        self._closed = True

    def call(
        self,
        ref: AgentRef,
        payload: Any,
        timeout: float = 5.0,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> Any:
        """Send a request to ``ref`` and block until its reply, as ``await ref.call`` would.

        Raises:
            CallTimeout, CallFailed, AgentStopped, DeliveryFailed, ...: what ``ref.call``
                raises, unchanged.
            SystemClosed: the system has shut down (or its Trio run has ended).
            WrongThread: called from the system's own thread, where it would deadlock.
        """
        send = functools.partial(ref.call, payload, timeout, priority=priority, options=options)
        return self._run("system.from_thread.call", "ref.call", send)

    def cast(
        self,
        ref: AgentRef,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """Send a message to ``ref`` and block until it is accepted, as ``await ref.cast``
        would.

        Raises:
            SystemClosed: the system has shut down (or its Trio run has ended).
            WrongThread: called from the system's own thread, where it would deadlock.
            What ``ref.cast`` raises (bad arguments; at most once, a failed delivery).
        """
        send = functools.partial(ref.cast, payload, priority=priority, options=options)
        self._run("system.from_thread.cast", "ref.cast", send)

    def _run(self, operation: str, awaitable: str, send: functools.partial[Any]) -> Any:
        if current_thread_id() == self._thread_id:
            raise WrongThread(
                f"{operation} was called from the message system's own thread, and did"
                f" nothing: it blocks its thread until the system's thread answers, which"
                f" would deadlock there. In the system's thread, use await {awaitable}(...)"
            )

        async def in_system_thread() -> Any:
            if self._closed:
                raise SystemClosed("the message system has shut down")
            return await send()

        try:
            return trio.from_thread.run(in_system_thread, trio_token=self._trio_token)
        except trio.RunFinishedError:
            raise SystemClosed("the message system has shut down (its Trio run ended)") from None
