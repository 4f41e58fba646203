"""The one thread a message system may be driven from: the thread of the Trio run it opened in.

Trio's objects belong to their run's thread. A send from any other thread (a worker thread, or
another ``trio.run``) would put a message in a mailbox and then fail to wake its agent, or wake
it in the wrong run: the message stays pending for ever and the system cannot shut down. So
every method that sends, waits or changes state first compares the caller's thread with the
system's, and refuses before it touches anything; plain reads need no check.

``system.from_thread`` (blocking ``call`` and ``cast``, from any thread) is the way in from
another thread; ``trio.from_thread.run`` runs its function in the system's own thread, so it
passes too.
"""

from __future__ import annotations

from threading import get_ident

from ..errors import WrongThread

__all__ = ["check_thread", "current_thread_id", "wrong_thread"]

#: The calling thread's id: one comparison with the system's ``thread_id`` is the whole check
#: (measured: about as cheap as a test can be, and it needs no Trio run in the caller's thread).
current_thread_id = get_ident


def wrong_thread(operation: str, remedy: str) -> WrongThread:
    """The error for ``operation`` called from a foreign thread: it points to
    ``system.from_thread`` for sends, and to ``remedy`` for the rest."""
    return WrongThread(
        f"{operation} was called from a thread other than the message system's (the thread of"
        f" its Trio run), and did nothing: Trio objects belong to one thread. From another"
        f" thread, send through system.from_thread.call(ref, ...) or"
        f" system.from_thread.cast(ref, ...); for anything else, call {remedy}"
    )


def check_thread(thread_id: int, operation: str, *, sync: bool = False) -> None:
    """Raise :class:`WrongThread` unless the caller runs in the thread ``thread_id``.

    ``operation`` names the method as a user would write it (``"system.spawn"``); ``sync``
    says it is not async, so that the remedy is ``trio.from_thread.run_sync``.

    Raises:
        WrongThread: the caller is in another thread.
    """
    if get_ident() != thread_id:
        runner = "run_sync" if sync else "run"
        raise wrong_thread(operation, f"trio.from_thread.{runner}({operation}, ...)")
