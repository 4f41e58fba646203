"""Payloads and user errors in our error messages and log records: through a bounded repr.

``supervisor`` (the lower package, which imports nothing of ours) holds the one
implementation; this is where the modules of ``terraphim_actors`` take it from.
"""

from supervisor._bounded_repr import REPR_LIMIT, bounded_repr, shorten

__all__ = ["REPR_LIMIT", "bounded_repr", "shorten"]
