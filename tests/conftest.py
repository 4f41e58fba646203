"""Shared test configuration: hypothesis profiles.

CI runs the default profile; ``TERRAPHIM_HYPOTHESIS_PROFILE=long uv run pytest`` runs the
property tests with many more examples.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("TERRAPHIM_HYPOTHESIS_PROFILE", "default"))
