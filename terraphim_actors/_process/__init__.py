"""Layer 4: one agent's life (its task, lifecycle, links), apart from what it does with messages."""
