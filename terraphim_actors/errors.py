"""The errors terraphim-actors raises.

Every error is a :class:`MessagingError`, and also subclasses the closest builtin so that
existing ``except`` clauses keep working::

    MessagingError
     ├── AgentNotFound          (also LookupError)   no agent by that id or name
     ├── DuplicateAgent         (also ValueError)    that name is already taken
     ├── InvalidConfig          (also ValueError)    a configuration value out of range
     ├── InvalidMessage         (also TypeError)     not an Envelope the system can carry
     ├── UnencodablePayload     (also TypeError)     a payload the codec cannot write as bytes
     ├── MailboxFull            (also trio.WouldBlock) a bounded mailbox refused a message
     ├── MailboxClosed                               the mailbox's agent has stopped for good
     ├── MessageTimeout         (also TimeoutError)  nothing arrived in time
     ├── CallTimeout            (also TimeoutError)  no reply within the call's deadline
     ├── HandlerTimeout         (also TimeoutError)  a handler ran past its handler_timeout
     ├── CallFailed                                  the callee raised; original in __cause__
     │    └── UnhandledMessage                       the callee has no handler for it
     ├── CallToSelf                                  an agent called itself (would deadlock)
     ├── AgentStopped                                the agent stopped before it replied
     │    └── NodeDown                               its node left the cluster
     ├── RemoteError                                 a remote handler's error, by name and text
     ├── AgentStartFailed                            ``on_start`` raised; original in __cause__
     ├── SystemClosed           (also RuntimeError)  the message system has shut down
     ├── WrongThread            (also RuntimeError)  used from a thread other than the system's
     ├── ReplyAlreadySent                            a call was answered twice
     ├── NonRetryable                                raised by a handler: never redeliver it
     ├── JournalError                                the durable journal itself failed
     ├── ClusterError                                NATS could not be reached or started
     └── DeliveryFailed                              given up on; last failure in __cause__
          └── CircuitOpen                            the recipient's circuit breaker is open
"""

from __future__ import annotations

import trio

__all__ = [
    "AgentNotFound",
    "AgentStartFailed",
    "AgentStopped",
    "CallFailed",
    "CallTimeout",
    "CallToSelf",
    "CircuitOpen",
    "ClusterError",
    "DeliveryFailed",
    "DuplicateAgent",
    "HandlerTimeout",
    "InvalidConfig",
    "InvalidMessage",
    "JournalError",
    "MailboxClosed",
    "MailboxFull",
    "MessageTimeout",
    "MessagingError",
    "NodeDown",
    "NonRetryable",
    "RemoteError",
    "ReplyAlreadySent",
    "SystemClosed",
    "UnencodablePayload",
    "UnhandledMessage",
    "WrongThread",
]


class MessagingError(Exception):
    """Base class of every error raised by terraphim-actors."""


class AgentNotFound(MessagingError, LookupError):
    """No agent is registered under that id or name."""


class DuplicateAgent(MessagingError, ValueError):
    """An agent is already registered under that name or id."""


class InvalidConfig(MessagingError, ValueError):
    """A configuration or option value is out of range or of the wrong type."""


class InvalidMessage(MessagingError, TypeError):
    """What was handed over for delivery is not an ``Envelope`` with ``MessageOptions``."""


class UnencodablePayload(MessagingError, TypeError):
    """A payload holds a value the codec cannot write for the journal or the wire: not a
    builtin it carries and not of a type registered with ``register_payload``."""


class MailboxFull(MessagingError, trio.WouldBlock):
    """A bounded mailbox with the ``REJECT`` policy (or a non-blocking send) is full.

    It is also a :class:`trio.WouldBlock`, the error Trio's own ``*_nowait`` operations raise.
    """


class MailboxClosed(MessagingError):
    """The mailbox is closed: its agent has stopped for good."""


class MessageTimeout(MessagingError, TimeoutError):
    """No message arrived within the time given to a receive."""


class CallTimeout(MessagingError, TimeoutError):
    """A call got no reply before its deadline; a late reply is dropped, never delivered."""


class HandlerTimeout(MessagingError, TimeoutError):
    """A handler ran past its agent's ``handler_timeout`` and was cancelled; it fails like any
    error the handler raised (through ``Agent.on_error``; a caller gets ``CallFailed``)."""


class CallFailed(MessagingError):
    """The callee raised while handling the call; the original error is the ``__cause__``."""


class UnhandledMessage(CallFailed):
    """The callee does not handle calls (it kept the default ``handle_call``)."""


class CallToSelf(MessagingError):
    """An agent called itself: it would wait for a reply only it can give."""


class AgentStopped(MessagingError):
    """The agent stopped (or crashed) before it replied, or has stopped for good."""


class NodeDown(AgentStopped):
    """The agent's node has left the cluster (it stopped, or its heartbeats ceased): a call to
    it fails at once rather than at its timeout."""


class RemoteError(MessagingError):
    """An exception raised on another node, which cannot cross as itself (its class may not
    exist here, and nothing is unpickled): its class's qualified name and its text. A remote
    handler's error reaches a caller as ``CallFailed`` with one of these as ``__cause__``."""

    def __init__(self, type_name: str, message: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        #: The qualified name of the exception's class on the node that raised it.
        self.type_name = type_name
        #: Its ``str()`` there.
        self.message = message


class AgentStartFailed(MessagingError):
    """The agent's ``on_start`` raised; the original error is the ``__cause__``."""


class ReplyAlreadySent(MessagingError):
    """A call can be answered once; this one already was."""


class SystemClosed(MessagingError, RuntimeError):
    """The message system has shut down (or is shutting down) and takes no new agents."""


class WrongThread(MessagingError, RuntimeError):
    """A method that sends, waits or changes state was called from a thread other than the one
    the message system runs in (its Trio run's); nothing was sent or changed.

    Trio objects belong to one thread. From another thread, send through
    ``system.from_thread.call`` or ``system.from_thread.cast``, or run the method in the
    system's thread with ``trio.from_thread.run`` (``trio.from_thread.run_sync`` for a sync
    method). Also raised by ``system.from_thread`` used from the system's own thread, where
    its blocking wait would deadlock.
    """


class JournalError(MessagingError):
    """A fault of the journal itself, not of a message: its file is corrupt, foreign, or of a
    newer schema than this version reads, cannot be written (a full disk, a read-only file or
    directory), or stayed locked longer than its ``busy_timeout``. The send or flush that
    needed the journal fails with it; the message says which file."""


class ClusterError(MessagingError):
    """A fault of the cluster's messaging itself, not of a message: the NATS servers could not
    be reached within the connect timeout, the connection is closed, or a local nats-server
    could not be started (its binary is not installed, or it exited before it was ready).
    The message says which servers or which binary."""


class DeliveryFailed(MessagingError):
    """The delivery layer gave up on a message: its retries ran out, or its guarantee does not
    retry that failure. The last failure is the ``__cause__``; the message is accounted for."""


class CircuitOpen(DeliveryFailed):
    """The recipient's circuit breaker is open: it failed too often, so messages fail fast
    until its reset timeout lets a trial message through."""


class NonRetryable(MessagingError):
    """Raised by a handler (or anywhere in the ``__cause__``/``__context__`` chain of what it
    raised): the message will fail the same way again, so it is never redelivered. A cast or
    info becomes a ``REJECTED`` dead letter at once, a call fails with ``CallFailed``; the
    agent's ``on_error`` still decides what becomes of the agent. The recipient's circuit
    breaker does not count it: the request was bad, not the recipient.
    """
