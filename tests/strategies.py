"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from terraphim_actors import Priority

#: Any message priority.
priorities = st.sampled_from(list(Priority))


@attrs.frozen
class SendStep:
    """Send one message at ``priority``, with ``await send`` or with ``send_nowait``."""

    priority: Priority
    blocking: bool


@attrs.frozen
class ReceiveStep:
    """Take one message, by one of the mailbox's receive operations."""

    how: str


#: The receive operations that take "the next message" from a mailbox.
RECEIVE_OPERATIONS = ("receive", "try_receive", "receive_timeout", "receive_matching")

#: A script of interleaved sends and receives on one mailbox, run by a single task.
mailbox_scripts = st.lists(
    st.one_of(
        st.builds(SendStep, priority=priorities, blocking=st.booleans()),
        st.builds(ReceiveStep, how=st.sampled_from(RECEIVE_OPERATIONS)),
    ),
    max_size=60,
)

#: What each of a few concurrent senders sends, in its order: for each message its priority
#: and how many extra checkpoints the sender makes before it, to vary the interleaving.
sender_plans = st.lists(
    st.lists(st.tuples(priorities, st.integers(min_value=0, max_value=2)), max_size=12),
    min_size=1,
    max_size=4,
)

#: Messages for selective receive: a priority and whether the predicate accepts the message.
selectable_messages = st.lists(st.tuples(priorities, st.booleans()), max_size=30)
