"""An agent's lifecycle as one state machine: its states and the moves allowed between them.

The cell changes its state only through :func:`transition`, which refuses a move the table does
not allow: an illegal move is a bug in the library, and failing loudly at the move is cheaper to
debug than a cell that later serves, restarts or settles in the wrong state. Moves happen once
per instance, never per message, so the check costs the hot path nothing.

======================  ==========================================  ============================
from                    to                                          when
======================  ==========================================  ============================
(a new cell)            STARTING                                    its starter makes it
STARTING                RUNNING                                     ``on_start`` returned
STARTING                RESTARTING                                  its start failed, to be
                                                                    retried by its supervisor
STARTING                STOPPED                                     its start failed for good,
                                                                    or it never ran (shutdown)
RUNNING                 STOPPING                                    its instance ends (stop,
                                                                    crash or kill)
RUNNING                 HIBERNATED                                  idle past its
                                                                    ``hibernate_after``
HIBERNATED              RUNNING                                     a message (or a stop) woke
                                                                    the kept instance
HIBERNATED              RESTARTING                                  stopped asleep, with no
                                                                    ``on_stop`` to run; its
                                                                    supervisor may start another
HIBERNATED              STOPPED                                     stopped for good asleep,
                                                                    with no ``on_stop`` to run
STOPPING                RESTARTING                                  the instance ended, and its
                                                                    supervisor may start another
STOPPING                STOPPED                                     the stop was final, or the
                                                                    system is shutting down
RESTARTING              STARTING                                    its supervisor restarts it
RESTARTING              STOPPED                                     its supervisor retires it
STOPPED                 (none)                                      for good: a later start makes
                                                                    a new cell
======================  ==========================================  ============================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["TRANSITIONS", "CellState", "IllegalTransition", "transition"]


class CellState(enum.Enum):
    """Where an agent is in its life (the moves between these are in :data:`TRANSITIONS`)."""

    # Hashed by identity, as members compare, at C speed: ``Enum`` hashes a member by its name
    # in Python, and a state is looked up in a set at each move and each ``serving`` check.
    __hash__ = object.__hash__

    #: An instance is being built and its ``on_start`` runs; messages wait.
    STARTING = "starting"
    #: An instance serves messages.
    RUNNING = "running"
    #: The instance is kept without a task (idle past its ``hibernate_after``): a message
    #: wakes it, through its supervisor.
    HIBERNATED = "hibernated"
    #: The instance is ending: what it had in hand is settled, then its ``on_stop`` runs.
    STOPPING = "stopping"
    #: Between instances: its supervisor will start it again (or retire it); messages wait.
    RESTARTING = "restarting"
    #: Stopped for good: the mailbox is closed and the name is free.
    STOPPED = "stopped"


#: The moves allowed from each state: the module docstring's table.
TRANSITIONS: Mapping[CellState, frozenset[CellState]] = {
    CellState.STARTING: frozenset({CellState.RUNNING, CellState.RESTARTING, CellState.STOPPED}),
    CellState.RUNNING: frozenset({CellState.STOPPING, CellState.HIBERNATED}),
    CellState.HIBERNATED: frozenset({CellState.RUNNING, CellState.RESTARTING, CellState.STOPPED}),
    CellState.STOPPING: frozenset({CellState.RESTARTING, CellState.STOPPED}),
    CellState.RESTARTING: frozenset({CellState.STARTING, CellState.STOPPED}),
    CellState.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A cell was asked to move between two states its lifecycle does not connect: an internal
    error of the library, never something a user's code causes."""


def transition(current: CellState, to: CellState) -> CellState:
    """``to``, if the lifecycle allows the move from ``current`` to it.

    Raises:
        IllegalTransition: the table does not allow the move.
    """
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"an agent cannot go from {current.name} to {to.name}")
    return to
