"""``MessageRouter``: the protocol a custom router of the user's own satisfies.

It sits at the system, the one layer that can name both what ``route`` is given (the
``MessageSystem``) and what it returns (``AgentRef``\\ s), so that a router written against it
keeps exactly that signature. The router below calls it through ``_routing.router.CustomRoute``,
which every ``MessageRouter`` satisfies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._behaviour.refs import AgentRef
from .._core.messages import Envelope

if TYPE_CHECKING:
    from .system import MessageSystem

__all__ = ["MessageRouter"]


@runtime_checkable
class MessageRouter(Protocol):
    """A routing policy of your own, in place of the built-in one for addressed messages.

    ``system.send_message(envelope)`` asks it which agents get the envelope; each gets its own
    copy (same message id, readdressed). Return no ref to say that nobody does: the message is
    then handled as for a missing recipient (retried, or a ``NOT_FOUND`` dead letter); return
    anything but refs and ``send_message`` raises ``InvalidConfig`` (a retry makes it a
    ``NOT_FOUND`` dead letter). A ref may be a pool's, which balances as usual. It runs on the
    sender's path: keep it quick and do not await. A retry of a message it routed nowhere asks
    it again (unless the message is addressed by ``AgentId``); a copy it addressed to an agent
    is retried to that agent.
    """

    def route(self, envelope: Envelope, system: MessageSystem) -> Sequence[AgentRef]:
        """The agents that should receive ``envelope``."""
        ...
