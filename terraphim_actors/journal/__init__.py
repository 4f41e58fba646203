"""Durable delivery: journals that keep accepted messages across a crash or a restart.

``MessageSystemConfig(journal=SqliteJournal("agents.db"))`` keeps every at-least-once and
exactly-once cast or info addressed by name in a SQLite file until it is settled; a system
opened again on the same file delivers what the last one left unsettled.
"""

from ._sqlite import SqliteJournal

__all__ = ["SqliteJournal"]
